#!/usr/bin/env python3
"""Build the project's container image from the repository's Dockerfile, locally, cached by content.

No registry and no Docker engine: the Dockerfile's base (docker.io/library/debian:bookworm-slim) is
made with mmdebstrap from Debian's packages and imported into buildah's storage; buildah builds the
Dockerfile itself (--isolation chroot: no runc or cgroups; RUN steps use the host's network, which
reaches Debian's mirror and PyPI) and exports an OCI archive that containerd imports:

    python3 scripts/image_build.py build   # prints the archive path, then the image reference
    python3 scripts/image_build.py ref     # the reference only, without building

The archive is .cache/images/mailsluice-<key>.tar holding localhost/mailsluice:<key>, where <key>
hashes everything that goes into the image (scripts/image_context.py: the Dockerfile, .dockerignore,
the files the context holds), the base's recipe and the build options. A present archive means
nothing to do. Importable by path (the tests): ensure_image() -> (archive, ref), image_key(),
image_ref(); scripts/image_archive.py reads an archive (config, root filesystem).
Standard library only; needs root (buildah's storage, mmdebstrap's root mode).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script or loaded by path (the tests): image_context is a sibling file.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_context import content_key

REPO_ROOT = Path(__file__).resolve().parent.parent
# MAILSLUICE_IMAGE_CACHE moves the cache (storage, base tarball, archives) elsewhere.
CACHE = Path(os.environ.get("MAILSLUICE_IMAGE_CACHE") or REPO_ROOT / ".cache" / "images").resolve()
IMAGE_NAME = "localhost/mailsluice"
BASE_REF = "docker.io/library/debian:bookworm-slim"
SUITE = "bookworm"
SOURCE_DATE_EPOCH = "0"
# This machine's Debian sources (deb.debian.org, updates, security), else the same by hand.
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_SOURCES = (
    f"deb http://deb.debian.org/debian {SUITE} main\n"
    f"deb http://deb.debian.org/debian {SUITE}-updates main\n"
    f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
)
# Like Debian's official slim images: no manuals, docs or translations (copyrights stay).
MMDEBSTRAP_OPTIONS = (
    "--variant=minbase",
    "--format=tar",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",  # usr-is-merged, not usrmerge + perl
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    # The host's resolv.conf and hostname would otherwise land in the image.
    '--customize-hook=: > "$1/etc/resolv.conf"; : > "$1/etc/hostname"',
)
BASE_CONFIG = (
    "--env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    '--cmd=["bash"]',
)
# --timestamp 0: every build of the same inputs gives the same config and file times. No
# io.buildah.version label: `docker build` would not add one either.
BUILD_OPTIONS = (
    "--isolation=chroot",
    "--pull=never",
    "--layers",
    "--timestamp=0",
    "--identity-label=false",
)
# pip inside the build trusts the CAs this machine trusts (e.g. a TLS-intercepting proxy's).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
KEEP_ARCHIVES = 4  # the newest used: worktrees sharing .cache alternate between keys
STORAGE_LIMIT = int(os.environ.get("MAILSLUICE_IMAGE_STORAGE_MB") or 8192) * 2**20


class ImageBuildError(RuntimeError):
    """Making the base, building or exporting the image failed."""


def _sources() -> str:
    return HOST_SOURCES.read_text() if HOST_SOURCES.exists() else DEFAULT_SOURCES


def base_key() -> str:
    """Hash of the base image's recipe (suite, options, Debian sources, SOURCE_DATE_EPOCH)."""
    recipe = [SUITE, SOURCE_DATE_EPOCH, *MMDEBSTRAP_OPTIONS, *BASE_CONFIG, _sources()]
    return hashlib.sha256("\0".join(recipe).encode()).hexdigest()[:16]


def image_key(root: Path = REPO_ROOT) -> str:
    """Content hash of everything that goes into the image (16 hex digits)."""
    return content_key(root, base_key(), *BUILD_OPTIONS)


def image_ref(key: str | None = None) -> str:
    return f"{IMAGE_NAME}:{key or image_key()}"


def archive_path(key: str | None = None) -> Path:
    return CACHE / f"mailsluice-{key or image_key()}.tar"


# --- buildah -------------------------------------------------------------------------------------

# Every buildah command runs in a private mount namespace where /var/lib is an overlay whose
# writes land in the cache: containers/image writes its blob-info cache under
# /var/lib/containers/cache for root whatever --root says, and nothing should go there.
_VARLIB_OVERLAY = (
    'mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$1/upper,workdir=$1/work" /var/lib'
    ' && shift && exec "$@"'
)


def _buildah_cmd(*args: str) -> list[str]:
    varlib = CACHE / "varlib"
    for sub in ("upper", "work"):
        (varlib / sub).mkdir(parents=True, exist_ok=True)
    storage = [
        f"--root={CACHE / 'storage'}",
        f"--runroot={CACHE / 'runroot'}",
        "--storage-driver=overlay",
    ]
    namespace = ["unshare", "--mount", "--propagation=private", "sh", "-c", _VARLIB_OVERLAY, "sh"]
    return [*namespace, str(varlib), "buildah", *storage, *args]


def _buildah_env() -> dict[str, str]:
    # TMPDIR: buildah keeps RUN --mount=type=cache directories (pip's cache) and its scratch
    # files there, /var/tmp otherwise.
    tmp = CACHE / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, TMPDIR=str(tmp), BUILDAH_ISOLATION="chroot")


def buildah(*args: str, log: Path | None = None) -> str:
    """Run buildah on the cache's storage. With `log`, its output goes there; without, its
    stdout is returned. Raises ImageBuildError when it fails."""
    with log.open("ab") if log else contextlib.nullcontext() as out:
        proc = subprocess.run(
            _buildah_cmd(*args),
            env=_buildah_env(),
            stdin=subprocess.DEVNULL,
            stdout=out or subprocess.PIPE,
            stderr=out or subprocess.PIPE,
            check=False,
        )
    if proc.returncode != 0:
        detail = f"see {log}" if log else proc.stderr.decode(errors="replace").strip()
        raise ImageBuildError(f"buildah {args[0]} failed (exit {proc.returncode}): {detail}")
    return "" if log else proc.stdout.decode()


def _image_id(ref: str) -> str | None:
    try:
        out = buildah("images", "--quiet", "--no-trunc", ref)
    except ImageBuildError:
        return None
    return out.split()[0] if out.split() else None


# --- the base image --------------------------------------------------------------------------


def _run_logged(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, check=False
        )
    if proc.returncode != 0:
        raise ImageBuildError(f"{cmd[0]} failed (exit {proc.returncode}); see {log}")


def _make_base_tar(target: Path, log: Path) -> None:
    mirrors = [str(HOST_SOURCES)] if HOST_SOURCES.exists() else DEFAULT_SOURCES.splitlines()
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    _run_logged(["mmdebstrap", *MMDEBSTRAP_OPTIONS, SUITE, str(tmp), *mirrors], log, env)
    # Device nodes under /dev are the runtime's to make (the official images have none).
    _run_logged(["tar", "--delete", "-f", str(tmp), "--wildcards", "./dev/?*"], log)
    tmp.replace(target)


def ensure_base(step: Callable[[str], None], log: Path) -> None:
    """Make the Debian base with mmdebstrap (cached tarball) and import it into buildah's
    storage as BASE_REF, each only when missing."""
    key = base_key()
    tar = CACHE / "base" / f"debian-{SUITE}-{key}.tar"
    stamp = tar.with_suffix(".id")
    tar.parent.mkdir(parents=True, exist_ok=True)
    if not tar.exists():
        _make_base_tar(tar, log)
        step(f"base: mmdebstrap {SUITE} -> {tar.name}")
    if stamp.exists() and _image_id(BASE_REF) == stamp.read_text().strip():
        return
    container = buildah("from", "--pull=never", "scratch").strip()
    try:
        buildah("add", "--quiet", container, str(tar), "/", log=log)
        buildah("config", *BASE_CONFIG, container, log=log)
        commit = ["--quiet", "--timestamp=0", "--identity-label=false"]
        buildah("commit", *commit, container, BASE_REF, log=log)
    finally:
        buildah("rm", container, log=log)
    stamp.write_text(_image_id(BASE_REF) or "")
    step(f"base: imported as {BASE_REF}")


# --- the image ---------------------------------------------------------------------------------


def _build(ref: str, log: Path) -> None:
    secret = [f"--secret=id=pip-ca,src={HOST_CA_BUNDLE}"] if HOST_CA_BUNDLE.exists() else []
    dockerfile = str(REPO_ROOT / "Dockerfile")
    buildah("build", *BUILD_OPTIONS, *secret, "-f", dockerfile, "-t", ref, str(REPO_ROOT), log=log)


def _export(ref: str, archive: Path, log: Path) -> None:
    tmp = archive.with_name(f".{archive.name}.tmp")
    tmp.unlink(missing_ok=True)
    buildah("push", "--quiet", ref, f"oci-archive:{tmp}:{ref}", log=log)
    tmp.replace(archive)


def _storage_bytes() -> int:
    total = 0
    for dirpath, _, filenames in os.walk(CACHE / "storage"):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _prune(keep: str, log: Path) -> None:
    """Old archives (all but the newest few) and old tags go; past the storage limit, so do the
    cached intermediate layers (the next build then starts again from the base)."""
    archives = sorted(CACHE.glob("mailsluice-*.tar"), key=lambda p: p.stat().st_mtime)
    for old in archives[:-KEEP_ARCHIVES]:
        old.unlink(missing_ok=True)
        shutil.rmtree(CACHE / "rootfs" / old.stem, ignore_errors=True)  # image_archive.rootfs
        key = old.stem.removeprefix("mailsluice-")
        (CACHE / "logs" / f"build-{key}.log").unlink(missing_ok=True)
    for image in json.loads(buildah("images", "--json") or "[]"):
        for name in image.get("names") or []:
            if name.startswith(IMAGE_NAME + ":") and name != image_ref(keep):
                buildah("rmi", name, log=log)
    if _storage_bytes() > STORAGE_LIMIT:
        buildah("rmi", "--prune", log=log)


def ensure_image(quiet: bool = False) -> tuple[Path, str]:
    """Build the image unless its archive exists; return (OCI archive path, image reference)."""
    key = image_key()
    ref, archive = image_ref(key), archive_path(key)
    if archive.exists():
        os.utime(archive)  # pruning keeps the most recently used archives
        return archive, ref
    _check_tools()
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build waits, then finds the archive
        if archive.exists():
            return archive, ref
        log = CACHE / "logs" / f"build-{key}.log"
        log.parent.mkdir(exist_ok=True)
        step = _stepper(quiet, log)
        ensure_base(step, log)
        _build(ref, log)
        step(f"build: {ref}")
        if image_key() != key:
            raise ImageBuildError("the sources changed during the build: run it again")
        _export(ref, archive, log)
        step(f"export: {archive} ({archive.stat().st_size / 2**20:.0f} MiB)")
        _prune(key, log)
    return archive, ref


def _stepper(quiet: bool, log: Path) -> Callable[[str], None]:
    started = last = time.monotonic()
    if not quiet:
        print(f"image: building (log: {log})", file=sys.stderr, flush=True)

    def step(what: str) -> None:
        nonlocal last
        now = time.monotonic()
        if not quiet:
            took = f"{now - last:.1f}s (total {now - started:.1f}s)"
            print(f"image: {what} in {took}", file=sys.stderr, flush=True)
        last = now

    return step


def _check_tools() -> None:
    missing = [tool for tool in ("buildah", "mmdebstrap", "unshare") if not shutil.which(tool)]
    if missing:
        raise ImageBuildError(f"missing {missing}: run scripts/install_system_deps.sh")
    if os.geteuid() != 0:
        raise ImageBuildError("building the image needs root (buildah storage, mmdebstrap)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "ref", "key"])
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.command == "key":
        print(image_key())
    elif args.command == "ref":
        print(image_ref())
    else:
        try:
            archive, ref = ensure_image(quiet=args.quiet)
        except ImageBuildError as exc:
            print(f"image: {exc}", file=sys.stderr)
            return 1
        print(archive)
        print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
