"""Pure rendering of a pool's children: Deployment and PodDisruptionBudget.

Input is the SendingPool body (as a dict) plus the operator's settings; output is plain manifests
ready for server-side apply. Nothing here talks to the API server. The spec reaches the workers
only as environment variables of their container (`worker_env`), each one a worker setting.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailsluice.contracts import topics
from mailsluice.kafka.settings import KafkaSettings
from mailsluice_operator import API_VERSION, KIND, warmup
from mailsluice_operator.links import signed_links
from mailsluice_operator.settings import OperatorSettings
from mailsluice_operator.spec import with_defaults

Manifest = dict[str, Any]

KAFKA_CA_DIR = "/etc/mailsluice/kafka-ca"
DKIM_DIR = "/etc/mailsluice/dkim"
SPEC_HASH_ANNOTATION = "mailsluice.io/spec-hash"
POOL_LABEL = "mailsluice.io/pool"
WORKER_UID = 10001
DEFAULT_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "512Mi"},
}


@dataclass(frozen=True)
class Pool:
    """The parts of a SendingPool body that rendering needs; the spec with the CRD's defaults."""

    name: str
    namespace: str
    uid: str
    spec: Mapping[str, Any]
    created: str = ""  # metadata.creationTimestamp: day 1 of a warm-up without a startDate

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Pool:
        meta = body["metadata"]
        spec = with_defaults(body.get("spec") or {})
        created = str(meta.get("creationTimestamp") or "")
        return cls(meta["name"], meta["namespace"], meta["uid"], spec, created)


def deployment_name(pool: str) -> str:
    return f"mailsluice-delivery-{pool}"


def selector_labels(pool: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mailsluice",
        "app.kubernetes.io/component": "delivery",
        POOL_LABEL: pool,
    }


def selector_string(pool: str) -> str:
    """status.selector, as the scale subresource wants it."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(pool).items()))


def labels(pool: str) -> dict[str, str]:
    return {
        **selector_labels(pool),
        "app.kubernetes.io/part-of": "mailsluice",
        "app.kubernetes.io/managed-by": "mailsluice-operator",
    }


def owner_reference(pool: Pool) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": pool.name,
        "uid": pool.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(pool: Pool, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": pool.namespace,
        "labels": labels(pool.name),
        "ownerReferences": [owner_reference(pool)],
    }


def spec_hash(pod_spec: Manifest) -> str:
    """Changes when anything the workers see changes (their pod's spec: env, volumes, image);
    not when only scaling does, so a new lagPerWorker or maxWorkers restarts no worker."""
    raw = json.dumps(pod_spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def kafka_env(kafka: KafkaSettings, op: OperatorSettings) -> list[dict[str, str]]:
    """The operator's Kafka settings handed to workers; credentials travel via kafka_secret."""
    cafile = f"{KAFKA_CA_DIR}/{op.kafka_ca_key}" if op.kafka_ca_secret else kafka.ssl_cafile
    return [
        {"name": "MAILSLUICE_KAFKA_BOOTSTRAP", "value": kafka.bootstrap},
        {"name": "MAILSLUICE_KAFKA_SECURITY_PROTOCOL", "value": kafka.security_protocol},
        {"name": "MAILSLUICE_KAFKA_SASL_MECHANISM", "value": kafka.sasl_mechanism},
        {"name": "MAILSLUICE_KAFKA_SSL_CAFILE", "value": cafile},
        {"name": "MAILSLUICE_KAFKA_REPLICATION_FACTOR", "value": str(kafka.replication_factor)},
        {"name": "MAILSLUICE_KAFKA_MIN_INSYNC_REPLICAS", "value": str(kafka.min_insync_replicas)},
        {"name": "MAILSLUICE_KAFKA_REQUEST_TIMEOUT_MS", "value": str(kafka.request_timeout_ms)},
    ]


def pool_overrides_env(pool: Pool) -> list[dict[str, str]]:
    """The pool's shaping rules and warm-up as the workers' shaping engine reads them
    (ShapingSettings' pool_overrides: a policy file's [pool.<name>] section); none when the
    spec has neither. Raises WarmupError for a spec reconcile refuses before it renders."""
    section: dict[str, Any] = {}
    for rule in pool.spec.get("shaping") or []:
        # Provider names (google) have no dot; recipient domains always do.
        table = "domain" if "." in rule["match"] else "provider"
        section.setdefault(table, {})[rule["match"].lower()] = shaping_rule(rule)
    addresses = pool.spec.get("sourceAddresses") or []
    config = warmup.worker_config(pool.spec["warmup"], addresses, pool.created or None)
    if config is not None:
        section["warmup"] = config
    if not section:
        return []
    value = json.dumps(section, sort_keys=True, separators=(",", ":"))
    return [{"name": "MAILSLUICE_SHAPING_POOL_OVERRIDES", "value": value}]


def shaping_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """One `shaping` item of the spec as a policy Rule (policy/shaping.py)."""
    out: dict[str, Any] = {}
    if rule.get("messagesPerSecond") is not None:
        number = f"{float(rule['messagesPerSecond']):.6f}".rstrip("0").rstrip(".")
        out["max_message_rate"] = f"{number}/s"  # the rate syntax has no exponents
    if rule.get("maxConnections") is not None:
        out["connection_limit"] = int(rule["maxConnections"])
    if rule.get("messagesPerConnection") is not None:
        out["max_deliveries_per_connection"] = int(rule["messagesPerConnection"])
    return out


def dkim_env(dkim: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """MAILSLUICE_DKIM_* for a pool's `dkim` section: the keys are the mounted Secret."""
    if not dkim:
        return []
    env = [{"name": "MAILSLUICE_DKIM_KEYS_DIR", "value": DKIM_DIR}]
    if dkim.get("domain"):
        env.append({"name": "MAILSLUICE_DKIM_DOMAIN", "value": str(dkim["domain"])})
    if dkim.get("scheduleKey"):
        value = f"{DKIM_DIR}/{dkim['scheduleKey']}"
        env.append({"name": "MAILSLUICE_DKIM_SCHEDULE_FILE", "value": value})
    return env


def worker_env(pool: Pool, kafka: KafkaSettings, op: OperatorSettings) -> list[dict[str, Any]]:
    """Operator-set variables, then the template's; a template variable wins by name."""
    spec = pool.spec
    ours: list[dict[str, Any]] = [
        *kafka_env(kafka, op),
        {"name": "MAILSLUICE_KAFKA_QUEUE_PARTITIONS", "value": str(spec["partitions"])},
        # Static group membership: the pod's name survives a container restart, so a crashed
        # worker takes its partitions back without stopping the pool's other workers.
        {
            "name": "MAILSLUICE_KAFKA_GROUP_INSTANCE_ID",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
        },
        {"name": "MAILSLUICE_DELIVERY_POOL", "value": pool.name},
        {"name": "MAILSLUICE_DELIVERY_HTTP_HOST", "value": "0.0.0.0"},
        {"name": "MAILSLUICE_DELIVERY_HTTP_PORT", "value": str(op.http_port)},
        {"name": "MAILSLUICE_OUTBOUND_EHLO_NAME", "value": str(spec.get("ehloName", ""))},
        # Every address of the pool: the worker spreads its sends over them.
        {
            "name": "MAILSLUICE_OUTBOUND_SOURCE_ADDRESSES",
            "value": ",".join(spec.get("sourceAddresses") or []),
        },
        *pool_overrides_env(pool),
        *dkim_env(spec.get("dkim")),
        *(e for links in signed_links(spec, op) for e in links.env()),
    ]
    template_env = [dict(e) for e in (spec.get("workerTemplate") or {}).get("env") or []]
    overridden = {e["name"] for e in template_env}
    return [e for e in ours if e["name"] not in overridden] + template_env


def _container(pool: Pool, kafka: KafkaSettings, op: OperatorSettings) -> dict[str, Any]:
    template = pool.spec.get("workerTemplate") or {}
    http = {"port": "http", "path": "/healthz"}
    container: dict[str, Any] = {
        "name": "delivery",
        "image": template.get("image") or op.image,
        "imagePullPolicy": op.image_pull_policy,
        "args": ["delivery", "--pool", pool.name],
        "env": worker_env(pool, kafka, op),
        "ports": [{"name": "http", "containerPort": op.http_port, "protocol": "TCP"}],
        "resources": template.get("resources") or DEFAULT_RESOURCES,
        "livenessProbe": {"httpGet": http, "periodSeconds": 10, "failureThreshold": 6},
        "readinessProbe": {
            "httpGet": {**http, "path": "/readyz"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if op.kafka_secret:
        container["envFrom"] = [{"secretRef": {"name": op.kafka_secret}}]
    if op.kafka_ca_secret:
        container["volumeMounts"].append(
            {"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True}
        )
    if pool.spec.get("dkim"):
        container["volumeMounts"].append({"name": "dkim", "mountPath": DKIM_DIR, "readOnly": True})
    container["volumeMounts"] += [links.mount() for links in signed_links(pool.spec, op)]
    return container


def render_deployment(
    pool: Pool, replicas: int, kafka: KafkaSettings, op: OperatorSettings
) -> Manifest:
    template = pool.spec.get("workerTemplate") or {}
    pod_spec: dict[str, Any] = {
        "containers": [_container(pool, kafka, op)],
        # The worker drains on SIGTERM (in-flight sends finish); give it room beyond that.
        "terminationGracePeriodSeconds": 60,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    if op.kafka_ca_secret:
        pod_spec["volumes"].append(
            {"name": "kafka-ca", "secret": {"secretName": op.kafka_ca_secret}}
        )
    if dkim := pool.spec.get("dkim"):
        # Read-only for owner and group (the group is fsGroup, the worker's).
        secret = {"secretName": dkim["secretName"], "defaultMode": 0o440}
        pod_spec["volumes"].append({"name": "dkim", "secret": secret})
    pod_spec["volumes"] += [links.pod_volume() for links in signed_links(pool.spec, op)]
    if template.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(template["nodeSelector"])
    if template.get("tolerations"):
        pod_spec["tolerations"] = [dict(t) for t in template["tolerations"]]
    if op.worker_service_account:
        pod_spec["serviceAccountName"] = op.worker_service_account
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(pool, deployment_name(pool.name)),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(pool.name)},
            # One worker at a time: a rebalance per step, never fewer consumers than wanted.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels(pool.name),
                    "annotations": {SPEC_HASH_ANNOTATION: spec_hash(pod_spec)},
                },
                "spec": pod_spec,
            },
        },
    }


def render_pdb(pool: Pool) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(pool, deployment_name(pool.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(pool.name)},
        },
    }


def render_all(
    pool: Pool, replicas: int, kafka: KafkaSettings, op: OperatorSettings
) -> list[Manifest]:
    """Children in apply order."""
    return [render_deployment(pool, replicas, kafka, op), render_pdb(pool)]


def queue_topic(pool: Pool) -> str:
    return topics.queue_topic(pool.name)
