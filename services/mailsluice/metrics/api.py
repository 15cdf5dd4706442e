"""Metrics of the HTTP API (`... import Api as api_metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from mailsluice.metrics.labels import OTHER, TIME_BUCKETS


class Api:
    # the first path segment after /v1 (anything else: other)
    ROUTES = ("messages", "templates", "suppressions", "campaigns", OTHER)
    CODES = (
        "200",
        "201",
        "202",
        "400",
        "401",
        "403",
        "404",
        "409",
        "413",
        "422",
        "429",
        "500",
        "503",
        OTHER,
    )
    RESULTS = ("accepted", "suppressed", "rejected")

    REQUESTS = Counter(
        "mailsluice_api_requests_total",
        "HTTP API requests by route and status code.",
        ["route", "code"],
    )
    RECIPIENTS = Counter(
        "mailsluice_api_recipients_total",
        "Recipients of POST /v1/messages answered 202, by result: accepted (queued, Kafka "
        "acknowledged), suppressed (a suppression scope of the message holds the address), "
        "rejected (its rendering failed or its message is too big).",
        ["result"],
    )
    PUBLISH_SECONDS = Histogram(
        "mailsluice_api_publish_seconds",
        "Time from a request's first record sent to Kafka's last acknowledgement.",
        buckets=TIME_BUCKETS,
    )
    REPLAYS = Counter(
        "mailsluice_api_idempotent_replays_total",
        "POSTs answered with the stored answer of their Idempotency-Key (nothing sent).",
    )

    @classmethod
    def route_label(cls, path: str) -> str:
        parts = path.strip("/").split("/")
        route = parts[1] if len(parts) > 1 and parts[0] == "v1" else OTHER
        return route if route in cls.ROUTES else OTHER

    @classmethod
    def code_label(cls, status: int) -> str:
        code = str(status)
        return code if code in cls.CODES else OTHER


for _result in Api.RESULTS:
    Api.RECIPIENTS.labels(_result)
