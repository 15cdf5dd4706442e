"""The container image, built from the repository's Dockerfile by scripts/image_build.py (buildah,
a Debian base made with mmdebstrap; cached by content, so only the first run after a change pays):
its configuration is what the Dockerfile's final stage says, and its entry point runs, as the
chart's user, every subcommand the chart and the operator start. The cache key follows exactly
what the build context holds."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.operator_pool import KAFKA, OP, POOL_BODY
from support.paths import REPO
from support.scripts import script

from mailsluice_operator import render

image_build = script("image_build")
image_archive = script("image_archive")
image_context = script("image_context")

CHART = REPO / "deploy" / "helm" / "mailsluice"


# --- the Dockerfile, read as the tests' own reference ----------------------------------------


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the last stage, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        lines.append(pending)
        pending = ""
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return [
        (instruction.upper(), args.strip())
        for instruction, args in (line.split(None, 1) for line in lines[last_from:])
    ]


def pairs(args: str) -> dict[str, str]:
    """KEY=VALUE words of ENV or LABEL (shell-quoted values)."""
    return dict(word.split("=", 1) for word in shlex.split(args))


def stage_values(name: str) -> list[str]:
    return [args for instruction, args in final_stage(REPO / "Dockerfile") if instruction == name]


# --- the image ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive() -> Path:
    """The image's OCI archive: built when its key has none (minutes), else reused (instant)."""
    path, ref = image_build.ensure_image(quiet=True)
    assert ref == image_build.image_ref()
    return Path(path)


@pytest.fixture(scope="module")
def config(archive: Path) -> dict[str, Any]:
    return dict(image_archive.image_config(archive)["config"])


def run_in_image(archive: Path, config: dict[str, Any], *argv: str) -> str:
    """Run argv (after the image's entry point unless it starts with '/') in the unpacked image
    under chroot as the image's user, with the image's environment; return its stdout."""
    root = image_archive.rootfs(archive)
    user, group = config["User"].split(":")
    env = dict(item.split("=", 1) for item in config["Env"])
    command = list(argv) if argv[0].startswith("/") else [*config["Entrypoint"], *argv]
    chroot = [shutil.which("chroot") or "chroot", f"--userspec={user}:{group}", f"--groups={group}"]
    proc = subprocess.run(
        [*chroot, str(root), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def started_commands() -> list[list[str]]:
    """The arguments of every container the chart renders and of the operator's workers."""
    found = []
    for template in sorted((CHART / "templates").glob("*.yaml")):
        for match in re.finditer(r"^\s*args:\s*(\[.*\])\s*$", template.read_text(), re.M):
            found.append(json.loads(match.group(1)))
    pool = render.Pool.from_body(POOL_BODY)
    (worker,) = render.render_deployment(pool, 1, KAFKA, OP)["spec"]["template"]["spec"][
        "containers"
    ]
    return [*found, worker["args"]]


# --- tests ---------------------------------------------------------------------------------------

pytestmark = pytest.mark.timeout(900)  # the first build after a change (cold: about 3 minutes)


def test_the_image_config_is_what_the_dockerfiles_final_stage_says(config: dict[str, Any]) -> None:
    (user,) = stage_values("USER")
    assert config["User"] == user == "10001:10001"
    (entrypoint,) = stage_values("ENTRYPOINT")
    assert config["Entrypoint"] == json.loads(entrypoint) == ["mailsluice"]
    (cmd,) = stage_values("CMD")
    assert config["Cmd"] == json.loads(cmd)
    exposed = {f"{port}/tcp" for args in stage_values("EXPOSE") for port in args.split()}
    assert set(config["ExposedPorts"]) == exposed
    assert {"2525/tcp", "8080/tcp"} <= exposed
    env = dict(item.split("=", 1) for item in config["Env"])
    base_path = image_build.BASE_CONFIG[0].removeprefix("--env=PATH=")
    for args in stage_values("ENV"):
        for key, value in pairs(args).items():
            assert env[key] == value.replace("$PATH", base_path), key
    assert env["PATH"].split(":")[0] == "/opt/mailsluice/bin"
    labels = {key: value for args in stage_values("LABEL") for key, value in pairs(args).items()}
    assert config["Labels"] == labels


def test_the_chart_and_the_operator_run_as_the_images_user(config: dict[str, Any]) -> None:
    uid, gid = (int(part) for part in config["User"].split(":"))
    pod = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)
    assert render.WORKER_UID == uid == gid


def test_the_entry_point_runs_every_subcommand_the_chart_and_operator_start(
    archive: Path, config: dict[str, Any]
) -> None:
    commands = started_commands()
    subcommands = {args[0] for args in commands}
    assert {"ingest", "delivery", "streams", "operator", "api", "tracker"} <= subcommands
    assert {"webhooks", "unsubscribe"} <= subcommands
    listing = run_in_image(archive, config, "--help")
    for args in commands:
        assert re.search(rf"^\s+{re.escape(args[0])}\b", listing, re.M), args[0]
        usage = run_in_image(archive, config, *args, "--help")
        assert usage.startswith(f"usage: mailsluice {args[0]}"), usage[:200]


def test_the_image_runs_both_packages_as_its_user_without_writing(
    archive: Path, config: dict[str, Any]
) -> None:
    code = (
        "import os, mailsluice, mailsluice_operator, mailsluice.cli;"
        "print(os.getuid(), os.getgid(), os.access('/opt/mailsluice', os.W_OK),"
        " mailsluice.__file__)"
    )
    out = run_in_image(archive, config, "/opt/mailsluice/bin/python", "-c", code).split()
    assert out[:3] == ["10001", "10001", "False"]
    assert out[3].startswith("/opt/mailsluice/lib/python3")


# --- the cache key and the build context (no image build) ------------------------------------


@pytest.fixture
def sources(tmp_path: Path) -> Iterator[Path]:
    """A copy of what the build reads (and a little of what it must not)."""
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tmp_path / name)
    for folder in ("services", "operator"):
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=ignore)
    yield tmp_path


def test_the_key_follows_sources_and_ignores_caches(sources: Path) -> None:
    key = image_build.image_key(sources)
    cli = sources / "services" / "mailsluice" / "cli.py"
    (cli.parent / "__pycache__").mkdir()
    (cli.parent / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\0")
    (sources / "services" / "mailsluice.egg-info").mkdir()
    (sources / "services" / "mailsluice.egg-info" / "PKG-INFO").write_text("x")
    (sources / "tests").mkdir()
    (sources / "tests" / "test_new.py").write_text("x = 1\n")
    assert image_build.image_key(sources) == key
    original = cli.read_text()
    cli.write_text(original + "# changed\n")
    assert image_build.image_key(sources) != key
    cli.write_text(original)
    assert image_build.image_key(sources) == key
    (sources / "operator" / "mailsluice_operator" / "new.py").write_text("")
    assert image_build.image_key(sources) != key


def test_the_key_follows_the_executable_bit_and_the_dockerfile(sources: Path) -> None:
    key = image_build.image_key(sources)
    (sources / "services" / "mailsluice" / "cli.py").chmod(0o755)
    assert image_build.image_key(sources) != key
    (sources / "services" / "mailsluice" / "cli.py").chmod(0o644)
    (sources / "Dockerfile").write_text((sources / "Dockerfile").read_text() + "# note\n")
    assert image_build.image_key(sources) != key


def test_the_hashed_files_are_the_context_buildah_copies(tmp_path: Path) -> None:
    """`COPY . /` from scratch with the repository's .dockerignore: the files buildah copies
    are the files the key hashes (here, with a stray cache file to leave out)."""
    stray = REPO / "services" / "mailsluice" / "__pycache__" / "test-image-stray.pyc"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"\0")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    out, tag = tmp_path / "out", "localhost/mailsluice-context-check:latest"
    try:
        output = f"--output=type=local,dest={out}"
        dockerfile = str(tmp_path / "Dockerfile")
        build = ["--isolation=chroot", "--pull=never", output, "-t", tag, "-f", dockerfile]
        image_build.buildah("build", *build, str(REPO))
        image_build.buildah("rmi", tag)
    finally:
        stray.unlink()
    copied = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir())
    assert copied == image_context.context_files(REPO)
    assert "pyproject.toml" in copied and not any("__pycache__" in p for p in copied)
