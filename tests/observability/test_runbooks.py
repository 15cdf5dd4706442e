"""The alert runbooks (docs/runbooks/): one per alert, each alert's runbook_url points at its
file, and every command an operator is told to run works: `mailsluice ...` against a real Kafka
broker, `kubectl ...` against a real kube-apiserver (the chart's CRDs, a SendingPool and the
pool's Deployment stored; no kubelet, so label-selected logs find no pods), `promtool query ...`
against a real Prometheus. Each command line of a ```sh block runs in bash exactly as written,
with the variables README.md names set."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.delivery_worker import enqueue, envelope
from support.events import publish_events
from support.eventually import eventually_sync
from support.fake_mx import free_port
from support.k8s_cluster import K8sCluster, kubectl_path
from support.k8s_fixtures import apply_crd
from support.monitoring_crds import manifest as monitoring_crds
from support.operator_cluster import apply_yaml, pool_yaml
from support.paths import REPO
from support.processes import get, stop, tails
from support.prometheus import start_prometheus

from mailsluice.contracts.events import Event, EventType
from mailsluice.kafka.admin import ensure_topics, standard_topics

RUNBOOKS = REPO / "docs" / "runbooks"
RULES = REPO / "deploy" / "helm" / "mailsluice" / "rules" / "mailsluice.rules.yaml"
URL_BASE = "https://github.com/mailsluice/mailsluice/blob/main/docs/runbooks/"
TOOLS = ("mailsluice", "kubectl", "promtool")
VARIABLES = ("NAMESPACE", "PROMETHEUS", "POOL", "PROVIDER", "ADDRESS", "TENANT", "ENDPOINT")
# Answers that may be empty on a quiet system: no dead webhook batch, no sample in Prometheus.
MAY_BE_EMPTY = ("mailsluice webhooks dead", "promtool ")
_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.M | re.S)


def alerts() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in data["groups"] for r in g["rules"] if "alert" in r}


def commands(path: Path) -> list[str]:
    """The command lines of the file's ```sh blocks (comments and blank lines left out)."""
    found = []
    for block in _BLOCK.findall(path.read_text()):
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                found.append(line.strip())
    return found


def all_commands() -> list[tuple[str, str]]:
    return [(p.name, c) for p in sorted(RUNBOOKS.glob("Mailsluice*.md")) for c in commands(p)]


def test_every_alert_has_summary_description_and_runbook_url() -> None:
    for name, rule in alerts().items():
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert "\n" not in annotations["summary"].strip(), name
        assert len(annotations["description"].split()) >= 12, name
        assert annotations["runbook_url"] == f"{URL_BASE}{name}.md", name
        assert (RUNBOOKS / f"{name}.md").is_file(), name


def test_no_runbook_is_orphaned_and_the_index_lists_them_all() -> None:
    names = set(alerts())
    pages = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == names
    index = (RUNBOOKS / "README.md").read_text()
    for name in names:
        assert f"]({name}.md)" in index, name


def test_runbooks_have_the_sections_and_commands() -> None:
    for path in sorted(RUNBOOKS.glob("Mailsluice*.md")):
        text = path.read_text()
        assert text.startswith(f"# {path.stem}\n"), path.name
        for section in ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation"):
            assert section in text, (path.name, section)
        assert commands(path), path.name


def test_commands_use_known_tools_and_variables() -> None:
    """Only the tools the command test runs, and only variables README.md defines (so an
    operator knows what to set); the old `peek events` form is gone."""
    readme = (RUNBOOKS / "README.md").read_text()
    for variable in VARIABLES:
        assert f"\n{variable}=" in readme, variable
    for name, command in all_commands():
        assert command.split()[0] in TOOLS, (name, command)
        used = set(re.findall(r"\$\{?([A-Z_]+)", command))
        assert used <= set(VARIABLES), (name, command)
        assert "peek events" not in command, (name, command)
    assert len(all_commands()) >= 30


def test_the_command_parser_sees_sh_blocks_only(tmp_path: Path) -> None:
    page = tmp_path / "x.md"
    page.write_text("```sh\nmailsluice topics list\n# why\n\n```\n```text\nnot me\n```\n")
    assert commands(page) == ["mailsluice topics list"]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "prometheus.log"
    proc = start_prometheus(tmp_path, port, {}, log)
    try:
        url = f"http://127.0.0.1:{port}"
        eventually_sync(
            lambda: get(f"{url}/-/ready")[0] == 200,
            within=30,
            what="prometheus ready",
            detail=lambda: tails([log]),
        )
        yield url
    finally:
        stop(proc)


def _kubernetes(cluster: K8sCluster, namespace: str, pool: str) -> None:
    """What the kubectl commands look at: the CRDs, a namespace, a SendingPool and its
    Deployment (stored only: no controller runs them)."""
    apply_crd(cluster)
    cluster.kubectl("apply", "--server-side", "-f", "-", input=monitoring_crds())
    cluster.kubectl("create", "namespace", namespace)
    apply_yaml(cluster, pool_yaml(pool, namespace))
    cluster.kubectl(
        "-n", namespace, "create", "deployment", f"mailsluice-delivery-{pool}", "--image=x"
    )


async def _kafka(kafka: Any, pool: str) -> None:
    """A pool's topics with one queue record, and a bounce on the events topic."""
    settings = kafka.settings()
    await ensure_topics(settings, standard_topics(settings, [pool], 1 << 20))
    await enqueue(settings, [envelope(pool, 1, ("r1@gmail.com",), queue_id="RB1")])
    bounce = Event(
        type=EventType.BOUNCE,
        queue_id="RB1",
        pool=pool,
        recipient="r1@gmail.com",
        code=550,
        enhanced="5.1.1",
    )
    await publish_events(settings, [bounce])


async def test_every_runbook_command_runs(
    kafka: Any, cluster: K8sCluster, prometheus: str, tmp_path: Path
) -> None:
    pool = "rb" + uuid.uuid4().hex[:6]
    namespace = f"runbooks-{pool}"
    await _kafka(kafka, pool)
    await asyncio.to_thread(_kubernetes, cluster, namespace, pool)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").symlink_to(kubectl_path())
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/bin"]),
        "KUBECONFIG": str(cluster.kubeconfig),
        "MAILSLUICE_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "NAMESPACE": namespace,
        "PROMETHEUS": prometheus,
        "POOL": pool,
        "PROVIDER": "google",
        "ADDRESS": f"complainer-{pool}@example.com",
        "TENANT": f"tenant-{pool}",
        "ENDPOINT": "orders",
    }
    # A paused endpoint for `webhooks status` to list (the runbook resumes it).
    seeded = await asyncio.to_thread(_bash, 'mailsluice webhooks pause "$TENANT" orders', env)
    assert seeded.returncode == 0, seeded.stderr
    failures = []
    for name, command in all_commands():
        proc = await asyncio.to_thread(_bash, command, env)
        failures += [f"{name}: {command}: {p}" for p in _problems(command, proc)]
    assert failures == [], "\n".join(failures)
    # The check can fail: the form the runbooks used to give is refused.
    wrong = "mailsluice peek events"
    assert _problems(wrong, await asyncio.to_thread(_bash, wrong, env))


def _bash(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _problems(command: str, proc: subprocess.CompletedProcess[str]) -> list[str]:
    out, err = proc.stdout, proc.stderr
    found = []
    if proc.returncode != 0:
        found.append(f"exit {proc.returncode}: {err.strip()[-500:]}")
    if "Traceback" in out + err or "unknown flag" in err or "usage:" in err:
        found.append(f"complains: {err.strip()[-500:]}")
    # kubectl answers "No resources found" on stderr for an empty list
    empty_list = command.startswith("kubectl") and "No resources found" in err
    if not out.strip() and not command.startswith(MAY_BE_EMPTY) and not empty_list:
        found.append("printed nothing")
    return found
