"""Metrics of DNS lookups (ingest's recipient checks and delivery's MX routing)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from mailsluice.metrics.labels import TIME_BUCKETS

DNS_RTYPES = ("MX",)
DNS_FAILURES = ("nxdomain", "no_answer", "timeout", "servfail", "error")

# --- DNS ---------------------------------------------------------------------------------------

DNS_SECONDS = Histogram(
    "mailsluice_dns_lookup_seconds",
    "Time of one DNS lookup, by record type.",
    ["rtype"],
    buckets=TIME_BUCKETS,
)
DNS_FAILURES_TOTAL = Counter(
    "mailsluice_dns_lookup_failures_total",
    "DNS lookups that gave no usable answer, by record type and reason.",
    ["rtype", "reason"],
)
