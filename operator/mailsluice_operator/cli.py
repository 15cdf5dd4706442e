"""`mailsluice operator`: run the SendingPool operator, or print its CRD."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mailsluice.config import LogSettings, load
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.observability.endpoints import setup_logging

if TYPE_CHECKING:
    from mailsluice_operator.settings import OperatorSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--print-crd",
        action="store_true",
        help="print the SendingPool CustomResourceDefinition as YAML and exit",
    )
    parser.add_argument(
        "--print-tenant-crd",
        action="store_true",
        help="print the SendingTenant CustomResourceDefinition as YAML and exit",
    )
    parser.add_argument(
        "--namespace",
        default=None,
        help="namespace to watch (default: MAILSLUICE_OPERATOR_NAMESPACE; empty: all)",
    )
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")


def run(args: argparse.Namespace) -> int:
    if args.print_crd:
        from mailsluice_operator.crd import crd_yaml

        print(crd_yaml(), end="")
        return 0
    if args.print_tenant_crd:
        from mailsluice_operator import tenant_crd

        print(tenant_crd.crd_yaml(), end="")
        return 0
    import kopf

    from mailsluice_operator.handlers import build_registry
    from mailsluice_operator.settings import OperatorSettings

    op = load(OperatorSettings)
    kafka = load(KafkaSettings)
    logs = load(LogSettings)
    setup_logging(logs.model_copy(update={"level": "DEBUG"}) if args.verbose else logs, "operator")
    namespace = op.namespace if args.namespace is None else args.namespace
    if op.metrics_port:
        from prometheus_client import start_http_server

        from mailsluice.metrics.operator import init_operator

        init_operator()
        start_http_server(op.metrics_port, addr=op.http_host)
    kopf.run(
        registry=build_registry(op, kafka),
        liveness_endpoint=liveness_endpoint(op),
        standalone=True,
        clusterwide=not namespace,
        namespaces=[namespace] if namespace else [],
    )
    return 0


def liveness_endpoint(op: OperatorSettings) -> str | None:
    """kopf's /healthz URL, on the operator's HTTP address (None: no health port)."""
    if not op.health_port:
        return None
    host = f"[{op.http_host}]" if ":" in op.http_host else op.http_host
    return f"http://{host}:{op.health_port}/healthz"
