"""The Helm chart installed on the node cluster (support.k8s_node) with the project's own image,
as a user installs it: `helm install`, `kubectl apply`, `kubectl port-forward`.

The outside world of the release lives on the node's bridge address, where pods reach the host:
a Kafka broker, a DNS server answering the test domain's MX and the MX itself (FakeMx, which
records every message with its arrival time).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.dns_server import DnsServer
from support.eventually import eventually_sync
from support.fake_mx import FakeMx
from support.k8s_node import NodeCluster
from support.kafka_broker import KafkaBroker
from support.paths import REPO

CHART = REPO / "deploy" / "helm" / "mailsluice"
SINK_DOMAIN = "sink.test"
POLL_S = 0.5


def _env(**values: str) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in values.items()]


@dataclass
class Outside:
    """What the release talks to, on the node's address."""

    kafka: KafkaBroker
    dns: DnsServer
    mx: FakeMx

    def resolver_env(self) -> dict[str, str]:
        return {"MAILSLUICE_DNS_NAMESERVERS": self.dns.nameserver}

    def worker_env(self) -> list[dict[str, str]]:
        """A SendingPool's workerTemplate.env: the test DNS and the MX's port."""
        return _env(
            **self.resolver_env(),
            MAILSLUICE_OUTBOUND_PORT=str(self.mx.port),
            MAILSLUICE_OUTBOUND_ALLOW_PRIVATE_DESTINATIONS="true",
        )


def values(image_ref: str, outside: Outside) -> dict[str, Any]:
    """The chart's values for one small node: the local image (never pulled), the test's Kafka
    (one broker), one replica of each component, and the test's DNS for ingest's MX checks."""
    repository, tag = image_ref.rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "kafka": {
            "bootstrap": outside.kafka.bootstrap,
            "replicationFactor": 1,
            "minInsyncReplicas": 1,
        },
        "ingest": {
            "replicas": 1,
            "hostname": "mta.e2e.test",
            "env": _env(
                **outside.resolver_env(), MAILSLUICE_INGEST_ALLOW_PRIVATE_DESTINATIONS="true"
            ),
        },
        "operator": {"scaleIntervalSeconds": 3},
    }


class Release:
    """One Helm release of the chart in its own namespace on the node cluster."""

    def __init__(self, node: NodeCluster, name: str, namespace: str, workdir: Path) -> None:
        self.node = node
        self.name = name
        self.namespace = namespace
        self.workdir = workdir

    @property
    def fullname(self) -> str:
        return f"{self.name}-mailsluice"

    def helm(self, *args: str, timeout: float = 600) -> str:
        argv = [str(self.node.bin_dir / "helm"), "--kubeconfig", str(self.node.kubeconfig)]
        proc = subprocess.run(
            [*argv, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} exited {proc.returncode}\n{proc.stderr}\n{self.diagnose()}"
            )
        return proc.stdout

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.node.kubectl("-n", self.namespace, *args, input=input, check=check).stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def install(self, chart_values: dict[str, Any], *extra: str) -> str:
        """`helm install --wait`: returns the NOTES Helm printed."""
        return self._helm_with_values("install", chart_values, "--create-namespace", *extra)

    def upgrade(self, chart_values: dict[str, Any], *extra: str) -> str:
        return self._helm_with_values("upgrade", chart_values, *extra)

    def _helm_with_values(self, verb: str, chart_values: dict[str, Any], *extra: str) -> str:
        path = self.workdir / f"values-{verb}.json"  # JSON is YAML
        path.write_text(json.dumps(chart_values))
        return self.helm(
            verb, self.name, str(CHART), "-n", self.namespace, "-f", str(path),
            "--wait", "--timeout", "6m", *extra,
        )  # fmt: skip

    def pods(self, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", "-l", selector)["items"]
        return items

    def component(self, name: str) -> str:
        return f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={name}"

    def ready_pods(self, selector: str) -> list[dict[str, Any]]:
        return [p for p in self.pods(selector) if is_ready(p)]

    def wait_ready(self, selector: str, count: int, within: float = 240) -> list[dict[str, Any]]:
        """Wait until exactly `count` pods match and are Ready (none terminating)."""

        def settled() -> list[dict[str, Any]]:
            pods = self.pods(selector)
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            ok = len(live) == count == len(pods) and all(is_ready(p) for p in live)
            return live if ok else []

        return eventually_sync(
            settled, within=within, interval=POLL_S, what=f"{count} Ready pods {selector}",
            detail=self.diagnose,
        )  # fmt: skip

    @contextlib.contextmanager
    def port_forward(self, target: str, remote_port: int) -> Iterator[int]:
        """`kubectl port-forward TARGET :PORT` as the NOTES say; yields the local port."""
        argv = self.node.kubectl_argv(
            "-n", self.namespace, "port-forward", target, f":{remote_port}"
        )
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:NNNN -> PORT"
            found = re.search(r"127\.0\.0\.1:(\d+)", line)
            assert found, f"port-forward said {line!r}: {proc.stderr.read() if proc.stderr else ''}"
            yield int(found.group(1))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    @contextlib.contextmanager
    def following_logs(self, pod: str) -> Iterator[Path]:
        """`kubectl logs -f POD` into a file for as long as the block runs (a deleted pod's
        logs are gone from the API, and they are what a failure after the deletion needs)."""
        path = self.workdir / f"{pod}.log"
        argv = self.node.kubectl_argv("-n", self.namespace, "logs", "-f", pod)
        with path.open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
            try:
                yield path
            finally:
                proc.terminate()
                proc.wait(timeout=10)

    def diagnose(self) -> str:
        """Pods, recent events, the workers' logs and those of pods that are not Ready, for
        failure messages."""
        out = [self.kubectl("get", "pods,deploy,spool", "-o", "wide", check=False)]
        events = self.kubectl("get", "events", "--sort-by=.lastTimestamp", check=False)
        out.append("\n".join(events.splitlines()[-25:]))
        with contextlib.suppress(Exception):
            # The operator's workers carry no instance label; their logs matter Ready or not.
            for pod in self.pods("app.kubernetes.io/component=delivery"):
                name = pod["metadata"]["name"]
                logs = self.kubectl("logs", name, "--tail=80", check=False)
                out.append(f"--- {name}\n{logs}")
            for pod in self.pods(f"app.kubernetes.io/instance={self.name}"):
                if not is_ready(pod):
                    name = pod["metadata"]["name"]
                    logs = self.kubectl("logs", name, "--tail=30", "--all-containers", check=False)
                    out.append(f"--- {name}\n{logs}")
        return "\n".join(out)


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def pool_manifest(name: str, namespace: str, outside: Outside, **spec: Any) -> str:
    body = {
        "apiVersion": "mailsluice.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "ehloName": "mta.e2e.test",
            "minWorkers": 1,
            "maxWorkers": 3,
            "warmup": {"preset": "none"},
            "workerTemplate": {"env": outside.worker_env()},
            **spec,
        },
    }
    return json.dumps(body)
