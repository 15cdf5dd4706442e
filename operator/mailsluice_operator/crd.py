"""The SendingPool CustomResourceDefinition, built here and written to the chart's crds/.

`mailsluice operator --print-crd` prints it; a test keeps deploy/helm/mailsluice/crds/ in sync.
"""

from __future__ import annotations

from typing import Any

import yaml

from mailsluice_operator import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from mailsluice_operator.warmup import PRESETS

Schema = dict[str, Any]

POOL_NAME = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
DNS_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"


def _int(description: str, *, minimum: int, maximum: int, default: int | None = None) -> Schema:
    out: Schema = {
        "type": "integer",
        "format": "int32",
        "minimum": minimum,
        "maximum": maximum,
        "description": description,
    }
    if default is not None:
        out["default"] = default
    return out


def _warmup() -> Schema:
    return {
        "type": "object",
        "description": "IP warm-up: a preset ramp or a custom table of daily volumes.",
        "default": {"preset": "none"},
        "x-kubernetes-validations": [
            {
                "rule": "!has(self.table) || size(self.table) == 0 || self.preset == 'none'",
                "message": "give either a warm-up preset or a table, not both",
            }
        ],
        "properties": {
            "preset": {
                "type": "string",
                "enum": list(PRESETS),
                "default": "none",
                "description": "Named ramp: none, sendgrid-like (20/hour, x1.4 a day) or "
                "ses-45-day (45 days to 50,000/day).",
            },
            "table": {
                "type": "array",
                "maxItems": 366,
                "description": "Custom ramp: daily volume from a day on (1-based); past the "
                "last day the pool is warm and uncapped.",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["day"],
                "items": {
                    "type": "object",
                    "required": ["day", "volume"],
                    "properties": {
                        "day": _int("Day of the ramp, from 1.", minimum=1, maximum=3650),
                        "volume": {
                            "type": "integer",
                            "format": "int64",
                            "minimum": 0,
                            "description": "Messages the pool may send on that day.",
                        },
                    },
                },
            },
            "startDate": {
                "type": "string",
                "format": "date",
                "description": "Day 1 of the ramp (YYYY-MM-DD); default: the pool's creation day.",
            },
        },
    }


def _shaping() -> Schema:
    return {
        "type": "array",
        "maxItems": 256,
        "description": "Overrides of the shipped shaping policy for this pool, per provider or "
        "domain.",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["match"],
        "items": {
            "type": "object",
            "required": ["match"],
            "properties": {
                "match": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 253,
                    "description": "Provider name (e.g. google) or recipient domain.",
                },
                "messagesPerSecond": {
                    "type": "number",
                    "minimum": 0,
                    "exclusiveMinimum": True,
                    "description": "Most messages per second to this destination.",
                },
                "maxConnections": _int(
                    "Most concurrent connections to this destination.", minimum=1, maximum=1000
                ),
                "messagesPerConnection": _int(
                    "Messages sent over one connection before it is closed.",
                    minimum=1,
                    maximum=100000,
                ),
            },
        },
    }


def _worker_template() -> Schema:
    free_object: Schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "type": "object",
        "description": "How worker pods look; unset fields take the operator's defaults.",
        "properties": {
            "image": {
                "type": "string",
                "maxLength": 512,
                "description": "Worker image (default: the operator's MAILSLUICE_OPERATOR_IMAGE).",
            },
            "resources": {
                "type": "object",
                "description": "Container resources (requests, limits) as in a Pod spec.",
                "properties": {
                    "requests": {
                        "type": "object",
                        "additionalProperties": {"x-kubernetes-int-or-string": True},
                    },
                    "limits": {
                        "type": "object",
                        "additionalProperties": {"x-kubernetes-int-or-string": True},
                    },
                },
            },
            "env": {
                "type": "array",
                "maxItems": 128,
                "description": "Extra environment variables (EnvVar objects); they win over the "
                "operator's by name.",
                "items": {
                    **free_object,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "description": "Variable name."}
                    },
                },
            },
            "nodeSelector": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Node labels the workers must run on (e.g. nodes owning the IPs).",
            },
            "tolerations": {
                "type": "array",
                "maxItems": 64,
                "description": "Tolerations of worker pods.",
                "items": free_object,
            },
        },
    }


def spec_schema() -> Schema:
    return {
        "type": "object",
        "description": "What the pool sends from and how it scales.",
        "required": ["ehloName"],
        "x-kubernetes-validations": [
            {
                "rule": "self.minWorkers <= self.maxWorkers",
                "message": "minWorkers must not exceed maxWorkers",
            },
            {
                "rule": "self.maxWorkers <= self.partitions",
                "message": "maxWorkers must not exceed partitions (a worker needs a partition)",
            },
            {
                "rule": "!has(self.replicas) || self.replicas <= self.partitions",
                "message": "replicas must not exceed partitions",
            },
        ],
        "properties": {
            "sourceAddresses": {
                "type": "array",
                "maxItems": 64,
                "description": "IP addresses the workers send from (must exist on their nodes).",
                "items": {"type": "string", "minLength": 2, "maxLength": 45},
                "x-kubernetes-validations": [
                    {"rule": "self.all(a, isIP(a))", "message": "every source address is an IP"}
                ],
            },
            "ehloName": {
                "type": "string",
                "maxLength": 253,
                "pattern": DNS_NAME,
                "description": "Host name in EHLO; should match the source addresses' PTR.",
            },
            "stream": {
                "type": "string",
                "enum": ["transactional", "bulk"],
                "default": "transactional",
                "description": "Traffic class of the pool (transactional mail has priority).",
            },
            "warmup": _warmup(),
            "shaping": _shaping(),
            "partitions": _int(
                "Partitions of the pool's queue topic; grows, never shrinks.",
                minimum=1,
                maximum=1000,
                default=12,
            ),
            "minWorkers": _int("Fewest workers.", minimum=0, maximum=1000, default=1),
            "maxWorkers": _int(
                "Most workers (at most partitions).", minimum=1, maximum=1000, default=4
            ),
            "lagPerWorker": _int(
                "Queued messages one worker should have (KEDA lagThreshold).",
                minimum=1,
                maximum=10_000_000,
                default=1000,
            ),
            "workerThroughput": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "default": 50,
                "description": "Messages per second one worker sustains; with today's warm-up "
                "cap it bounds how many workers are useful.",
            },
            "scaleDownStabilizationSeconds": _int(
                "How long lower worker counts must be wanted before scaling down.",
                minimum=0,
                maximum=86400,
                default=300,
            ),
            "replicas": _int(
                "Fixed worker count (scale subresource); unset: scale on lag.",
                minimum=0,
                maximum=1000,
            ),
            "workerTemplate": _worker_template(),
        },
    }


def status_schema() -> Schema:
    condition: Schema = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64"},
        },
    }
    count: Schema = {"type": "integer", "format": "int64"}
    return {
        "type": "object",
        # kopf keeps its own progress here; without this the API server prunes it (kopf #574).
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "observedGeneration": count,
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": condition,
            },
            "replicas": count,
            "readyReplicas": count,
            "selector": {"type": "string"},
            "lag": count,
            "partitions": count,
            "warmupDay": count,
            "todayCap": count,
            "todayUsage": count,
            "topic": {"type": "string"},
            "lastScaleReason": {"type": "string"},
        },
    }


def printer_columns() -> list[Schema]:
    return [
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        },
        {"name": "Workers", "type": "integer", "jsonPath": ".status.replicas"},
        {"name": "Lag", "type": "integer", "jsonPath": ".status.lag"},
        {"name": "Warm-up day", "type": "integer", "jsonPath": ".status.warmupDay"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "mailsluice"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["mailsluice"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": printer_columns(),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A pool of delivery workers sharing source addresses, "
                            "warm-up and shaping.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"self.metadata.name.matches('{POOL_NAME}')",
                                    "message": "a pool name is 1-40 lower-case letters, digits "
                                    "and dashes (it names a Kafka topic and labels)",
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated by `mailsluice operator --print-crd` (operator/mailsluice_operator/crd.py).\n"


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100)
