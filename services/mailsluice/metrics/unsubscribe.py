"""Metrics of unsubscribing: the one-click service's requests and ingest's mailto address."""

from __future__ import annotations

from prometheus_client import Counter, Histogram


class Unsubscribe:
    """Unsubscribe requests (`... import Unsubscribe as unsubscribe_metrics`)."""

    # page: GET of the confirmation page; one-click: the POST (RFC 8058); mailto: mail to the
    # List-Unsubscribe address at ingest
    CHANNELS = ("page", "one-click", "mailto")
    # ok, a token that does not verify (tokens.TokenError reasons), a POST without the
    # one-click body, Kafka not acknowledging the event in time
    RESULTS = ("ok", "malformed", "unknown_key", "forged", "not_one_click", "unavailable")

    REQUESTS = Counter(
        "mailsluice_unsubscribe_requests_total",
        "Unsubscribe requests by channel and result; an ok one-click or mailto request "
        "produced an unsubscribe event that Kafka acknowledged.",
        ["channel", "result"],
    )
    SECONDS = Histogram(
        "mailsluice_unsubscribe_post_seconds",
        "Time from a one-click POST to its answer (the event acknowledged by Kafka).",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    )


for _channel in Unsubscribe.CHANNELS:
    for _result in Unsubscribe.RESULTS:
        Unsubscribe.REQUESTS.labels(_channel, _result)
