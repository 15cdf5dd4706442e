"""Metrics of the tracker service: pixel loads and link clicks, machines, dropped events."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from mailsluice.contracts.events import MACHINE_REASONS


class Tracker:
    """The open pixel and click redirects (`... import Tracker as tracker_metrics`)."""

    KINDS = ("open", "click")
    # ok, a token that does not verify (sealing.TokenError reasons), or a token of the other
    # kind (an open token on /c/, a click token on /o/)
    # ok wrote an event; head answered a HEAD (a checker's, recorded as nothing)
    OUTCOMES = ("ok", "head", "malformed", "unknown_key", "forged", "wrong_kind")
    REASONS = MACHINE_REASONS

    REQUESTS = Counter(
        "mailsluice_tracker_requests",
        "Pixel loads (open) and link clicks (click) by outcome; an ok one wrote an event.",
        ["kind", "outcome"],
    )
    MACHINES = Counter(
        "mailsluice_tracker_machine_events",
        "Opens and clicks judged a machine's (privacy proxy, prefetch, scanner, too soon after "
        "sending, every link at once), by reason; the rest count as a person's.",
        ["kind", "reason"],
    )
    DROPPED = Counter(
        "mailsluice_tracker_events_dropped",
        "Open and click events not written: the buffer was full while Kafka did not take "
        "them, or Kafka did not answer before the service stopped.",
    )
    PENDING = Gauge(
        "mailsluice_tracker_pending_records",
        "Open and click events waiting for Kafka's acknowledgement.",
    )


for _kind in Tracker.KINDS:
    for _outcome in Tracker.OUTCOMES:
        Tracker.REQUESTS.labels(_kind, _outcome)
    for _reason in Tracker.REASONS:
        Tracker.MACHINES.labels(_kind, _reason)
