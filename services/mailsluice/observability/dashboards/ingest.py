"""Ingest dashboard: SMTP connections, transactions, Kafka publishing and DNS.

(Outbound SMTP latency is the delivery side's: it is on the deliverability dashboard.)"""

from __future__ import annotations

from mailsluice.observability.dashboards.panels import (
    RI,
    Panel,
    meaning,
    percentiles,
    quantile,
    rate,
)

INGEST = (
    Panel(
        "Open connections",
        "short",
        (("sum(mailsluice_ingest_connections_open)", "open"),),
        "SMTP connections open now.",
    ),
    Panel(
        "New connections",
        "ops",
        (("sum(rate(mailsluice_ingest_connections_total[" + RI + "]))", "new"),),
        "SMTP connections accepted per second.",
    ),
    Panel(
        "Transactions by result",
        "ops",
        ((rate("mailsluice_ingest_transactions_total", "", "result"), "{{result}}"),),
        "Message transactions at DATA, stacked: queued, tempfail (451), rejected, too_big, "
        "aborted.",
        colors=meaning("queued", "tempfail", "rejected", "too_big", "aborted"),
        stack=True,
    ),
    Panel(
        "Recipients by result and reason",
        "ops",
        (
            (
                rate("mailsluice_ingest_recipients_total", "", "result, reason"),
                "{{result}} {{reason}}",
            ),
        ),
        "Recipients judged at RCPT; `suppressed` counts suppression-list hits.",
        colors=meaning("accepted"),
    ),
    Panel(
        "Bytes queued",
        "Bps",
        (("sum(rate(mailsluice_ingest_bytes_total[" + RI + "]))", "bytes"),),
        "Message bytes written to Kafka per second.",
    ),
    Panel(
        "Kafka publish latency (p50, p99)",
        "s",
        percentiles("mailsluice_ingest_kafka_publish_seconds", ""),
        "From the first send to the last acknowledgement of a message.",
    ),
    Panel(
        "Transaction latency (p50, p99)",
        "s",
        percentiles("mailsluice_ingest_transaction_seconds", ""),
        "From MAIL FROM to the reply after DATA.",
    ),
    Panel(
        "Protocol violations",
        "ops",
        ((rate("mailsluice_ingest_protocol_violations_total", "", "kind"), "{{kind}}"),),
        "Connections closed for early talking, bad pipelining, too many errors or messages.",
    ),
    Panel(
        "DNS lookups and failures",
        "ops",
        (
            (rate("mailsluice_dns_lookup_seconds_count", "", "rtype"), "{{rtype}} lookups"),
            (
                rate("mailsluice_dns_lookup_failures_total", "", "rtype, reason"),
                "{{rtype}} {{reason}}",
            ),
        ),
        "MX lookups per second (ingest recipient checks and delivery routing), and failures.",
    ),
    Panel(
        "DNS lookup latency (p95)",
        "s",
        ((quantile(0.95, "mailsluice_dns_lookup_seconds", "", "rtype"), "{{rtype}}"),),
    ),
)
