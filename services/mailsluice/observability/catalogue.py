"""The metric catalogue (docs/metrics.md), rendered from the registered metrics themselves.

`python -m mailsluice.observability.catalogue > docs/metrics.md` regenerates it;
tests/observability/test_catalogue.py fails when the committed file differs, so the catalogue cannot
drift from the code. Every label must have an entry in LABEL_VALUES (by label name, or by metric and
label name), which is where its closed value set is written down.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry

import mailsluice.metrics as metrics_package
from mailsluice.contracts.topics import RETRY_TIERS
from mailsluice.metrics.ingest import INGEST_REJECT_REASONS
from mailsluice.metrics.labels import METRIC_PREFIX

# The module that defines every mailsluice_* metric (its namespace classes are walked too).
# Every module of the metrics package but the label helpers defines a component's metrics.
METRIC_MODULES = tuple(
    f"{metrics_package.__name__}.{info.name}"
    for info in pkgutil.iter_modules(metrics_package.__path__)
    if info.name != "labels"
)


def _values(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"`{v}`" if v else '`""`' for v in values)


def _label_values() -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    from mailsluice.metrics.delivery import SMTP_STAGES
    from mailsluice.metrics.delivery import Delivery as delivery
    from mailsluice.metrics.labels import OTHER, OUTCOME_RESULTS, STATUS_CLASSES
    from mailsluice.metrics.operator import RECONCILE_RESULTS, WORKER_KINDS
    from mailsluice.metrics.resolver import DNS_FAILURES, DNS_RTYPES
    from mailsluice.metrics.shaping import REPLY_CLASSES
    from mailsluice.metrics.shaping import Shaping as shaping_metrics

    tiers = [name for name, _ in RETRY_TIERS]
    by_label = {
        "pool": "sending pool name (configuration)",
        "provider": "provider name from the policy's provider rollup; any other domain is "
        f"`{OTHER}`",
        "source": _values(["transactional", "bulk"]) + " (the envelope's stream)",
        "partition": "partition number of the pool's queue topic",
        "tier": _values(tiers) + " (retry delay tiers)",
        "state": _values(shaping_metrics.STATES),
        "rule": "`operator` (the only suspensions a worker makes itself are an operator's)",
        "reply_class": _values(sorted(REPLY_CLASSES)) + f" or `{OTHER}`",
        "scope": "`*` (whole pool) or a provider name of the warm-up schedule",
        "source_ip": "source address of the pool the warm-up is for (configuration; empty: "
        "the pool sends from its host's own address)",
        "period": _values(["hour", "day"]),
        "stage": _values(SMTP_STAGES),
        "rtype": _values(DNS_RTYPES),
        "class": _values(STATUS_CLASSES[8:]) + " (RFC 3463 class.subject)",
        "cause": _values(["failure", "throttled"]),
        "target_pool": "sending pool name the warm-up overflows to (configuration)",
    }
    by_metric = {
        **_ingest_label_values(),
        **_dkim_label_values(),
        ("mailsluice_delivery_attempts", "result"): _values(delivery.ATTEMPT_RESULTS),
        ("mailsluice_delivery_recipients", "result"): _values(delivery.ATTEMPT_RESULTS),
        ("mailsluice_delivery_commits", "result"): _values(["ok", "failed"]),
        ("mailsluice_delivery_smtp_connections", "result"): _values(["opened", "reused", "failed"]),
        ("mailsluice_delivery_provider_recipients", "result"): _values(OUTCOME_RESULTS),
        ("mailsluice_delivery_deferrals", "reason"): _values(STATUS_CLASSES[:8])
        + f", `{OTHER}` (RFC 3463 class.subject of the reply)",
        ("mailsluice_delivery_suppressed", "scope"): _values(delivery.SCOPE_KINDS)
        + " (the kind of suppression scope that matched)",
        ("mailsluice_dns_lookup_failures", "reason"): _values(DNS_FAILURES),
        ("mailsluice_operator_reconciles", "result"): _values(RECONCILE_RESULTS),
        ("mailsluice_operator_workers", "kind"): _values(WORKER_KINDS),
        **_streams_label_values(),
        **_engagement_label_values(),
        **_unsubscribe_label_values(),
        **_webhooks_label_values(),
        **_api_label_values(),
        **_tracker_label_values(),
        **_tracking_label_values(),
    }
    return by_label, by_metric


def _engagement_label_values() -> dict[tuple[str, str], str]:
    from mailsluice.metrics.streams import Streams

    return {
        ("mailsluice_streams_opens", "kind"): _values(Streams.ENGAGEMENT_KINDS),
        ("mailsluice_streams_clicks", "kind"): _values(Streams.ENGAGEMENT_KINDS),
        ("mailsluice_streams_human_retracted", "kind"): _values(Streams.RETRACTED_KINDS),
    }


def _tracking_label_values() -> dict[tuple[str, str], str]:
    from mailsluice.metrics.delivery import TRACKING_OUTCOMES

    return {
        ("mailsluice_delivery_tracking", "outcome"): _values(TRACKING_OUTCOMES)
        + " (tracked, or why the copy was left as it came)",
    }


def _webhooks_label_values() -> dict[tuple[str, str], str]:
    from mailsluice.metrics.webhooks import Webhooks

    return {
        ("mailsluice_webhooks_batches", "result"): _values(Webhooks.RESULTS),
        ("mailsluice_webhooks_events", "result"): _values(Webhooks.RESULTS),
    }


def _api_label_values() -> dict[tuple[str, str], str]:
    from mailsluice.metrics.api import Api

    return {
        ("mailsluice_api_requests", "route"): _values(Api.ROUTES) + " (the resource after /v1)",
        ("mailsluice_api_requests", "code"): _values(Api.CODES) + " (HTTP status)",
        ("mailsluice_api_recipients", "result"): _values(Api.RESULTS),
    }


def _tracker_label_values() -> dict[tuple[str, str], str]:
    from mailsluice.metrics.tracker import Tracker

    return {
        ("mailsluice_tracker_requests", "kind"): _values(Tracker.KINDS),
        ("mailsluice_tracker_requests", "outcome"): _values(Tracker.OUTCOMES),
        ("mailsluice_tracker_machine_events", "kind"): _values(Tracker.KINDS),
        ("mailsluice_tracker_machine_events", "reason"): _values(Tracker.REASONS),
    }


def _streams_label_values() -> dict[tuple[str, str], str]:
    from mailsluice.metrics.labels import OTHER
    from mailsluice.metrics.streams import Streams

    return {
        ("mailsluice_streams_events", "pool"): f"sending pool name, or `{OTHER}`",
        ("mailsluice_streams_events", "type"): _values(Streams.EVENT_TYPES),
        ("mailsluice_streams_suppressions", "reason"): _values(Streams.SUPPRESSION_REASONS),
        ("mailsluice_streams_errors", "agent"): _values(Streams.AGENTS),
    }


def _unsubscribe_label_values() -> dict[tuple[str, str], str]:
    from mailsluice.metrics.unsubscribe import Unsubscribe

    return {
        ("mailsluice_unsubscribe_requests", "channel"): _values(Unsubscribe.CHANNELS),
        ("mailsluice_unsubscribe_requests", "result"): _values(Unsubscribe.RESULTS),
    }


def _dkim_label_values() -> dict[tuple[str, str], str]:
    from mailsluice.metrics.dkim import DKIM_ALGORITHMS, UNSIGNED_REASONS

    return {
        ("mailsluice_delivery_dkim_signatures", "algorithm"): _values(DKIM_ALGORITHMS),
        ("mailsluice_delivery_dkim_unsigned", "reason"): _values(UNSIGNED_REASONS),
    }


def _ingest_label_values() -> dict[tuple[str, str], str]:
    """Label values of the ingest's metrics whose labels are their own."""
    from mailsluice.metrics.ingest import FEEDBACK_REJECT_REASONS
    from mailsluice.metrics.ingest import Ingest as ingest

    return {
        ("mailsluice_ingest_transactions", "result"): _values(ingest.TRANSACTION_RESULTS),
        ("mailsluice_ingest_recipients", "result"): _values(["accepted", "rejected"]),
        ("mailsluice_ingest_recipients", "reason"): _values(["", *INGEST_REJECT_REASONS])
        + " (empty when accepted)",
        ("mailsluice_ingest_protocol_violations", "kind"): _values(ingest.VIOLATION_KINDS),
        ("mailsluice_ingest_feedback_rejected", "reason"): _values(FEEDBACK_REJECT_REASONS),
        ("mailsluice_ingest_connections_refused", "reason"): _values(ingest.REFUSED_REASONS),
        ("mailsluice_ingest_data_budget_refused", "stage"): _values(ingest.BUDGET_STAGES),
        ("mailsluice_ingest_auth_attempts", "result"): _values(ingest.AUTH_RESULTS),
        ("mailsluice_ingest_auth_lockouts", "by"): _values(ingest.AUTH_LOCKOUT_BY),
        ("mailsluice_ingest_senders_not_owned", "where"): _values(ingest.SENDER_WHERE),
    }


def _collectors(namespace: dict[str, Any]) -> Iterator[Any]:
    """Metric objects and custom collectors defined in a module or a namespace class."""
    for value in namespace.values():
        if isinstance(value, MetricWrapperBase) or (
            not isinstance(value, type | CollectorRegistry | ModuleType)
            and callable(getattr(value, "collect", None))
        ):
            yield value
        elif isinstance(value, type) and value.__module__ in METRIC_MODULES:
            yield from _collectors(dict(vars(value)))


def families() -> Iterator[tuple[Metric, tuple[str, ...]]]:
    """(family, label names) of every mailsluice_* metric the metric modules define, sorted by
    name. Walks the modules' own objects, not the global registry, which tests add to."""
    found: dict[str, tuple[Metric, tuple[str, ...]]] = {}
    for name in METRIC_MODULES:
        for collector in _collectors(dict(vars(importlib.import_module(name)))):
            describe = getattr(collector, "describe", None)
            described = list(describe()) if describe is not None else []
            for family in described or list(collector.collect()):
                if not family.name.startswith(METRIC_PREFIX + "_"):
                    continue
                labels: Any = getattr(collector, "_labelnames", None)
                if labels is None:
                    labels = getattr(family, "_labelnames", ())
                found[family.name] = (family, tuple(str(label) for label in labels))
    yield from (found[name] for name in sorted(found))


def exposed_name(family: Metric) -> str:
    return family.name + "_total" if family.type == "counter" else family.name


def label_values(metric: str, label: str) -> str:
    by_label, by_metric = _label_values()
    text = by_metric.get((metric, label)) or by_label.get(label, "")
    if not text:
        raise KeyError(f"no value set documented for label {label!r} of {metric}")
    return text


def render() -> str:
    lines = [
        "# Metrics catalogue",
        "",
        "Generated by `python -m mailsluice.observability.catalogue > docs/metrics.md` from the",
        "registered metrics; `tests/observability/test_catalogue.py` fails when this file is",
        "stale. Every label value",
        "comes from the closed set given here: never an address, a message id or a raw domain.",
        "Counters are exposed with the `_total` suffix, histograms as `_bucket`, `_sum`, `_count`.",
        "",
    ]
    for family, labels in families():
        lines += [f"## `{exposed_name(family)}`", "", f"- type: {family.type}"]
        if labels:
            lines.append("- labels:")
            lines += [f"  - `{label}`: {label_values(family.name, label)}" for label in labels]
        else:
            lines.append("- labels: none")
        lines += [f"- meaning: {family.documentation}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
