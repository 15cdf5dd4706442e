"""The Prometheus Operator's monitoring.coreos.com kinds, as bare CRDs (no schema): enough for
the API server to store the chart's ServiceMonitors and PodMonitors so a test can read them back
and hold them against the running pods. No Prometheus Operator runs."""

from __future__ import annotations

import json

KINDS = {"ServiceMonitor": "servicemonitors", "PodMonitor": "podmonitors"}


def crd(kind: str, plural: str) -> dict[str, object]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def manifest() -> str:
    items = [crd(kind, plural) for kind, plural in KINDS.items()]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
