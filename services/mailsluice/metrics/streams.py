"""Metrics of the stream processors."""

from __future__ import annotations

from prometheus_client import Counter

from mailsluice.metrics.labels import _PROVIDER_NAME, OTHER

# --- stream processors (streams/) ---------------------------------------------------------------


class Streams:
    """Metrics of the stream processors (`... import Streams as streams_metrics`). Counters of
    this process (Prometheus sums the replicas); the per-day numbers live in the faust table."""

    EVENT_TYPES = (
        "reception",
        "rejection",
        "delivery",
        "transient_failure",
        "bounce",
        "expiration",
        "suppression",
        "complaint",
        "destination_state",
        "unsubscribe",
        "suppressed",
        "open",
        "click",
    )
    SUPPRESSION_REASONS = (
        "hard-bounce",
        "complaint",
        "repeated-soft-bounce",
        "unsubscribe",
        "unengaged",  # hygiene (streams/hygiene.py)
    )
    AGENTS = ("route", "judge", "tally", "hygiene")  # tally: campaign stats; hygiene: engagement

    EVENTS = Counter(
        "mailsluice_streams_events_total",
        "Events read from mailsluice.events by the stream processors, by pool (`other` when the "
        "event names none) and event type.",
        ["pool", "type"],
    )
    SUPPRESSIONS = Counter(
        "mailsluice_streams_suppressions_total",
        "Suppression records the stream processors wrote to mailsluice.suppressions, by reason.",
        ["reason"],
    )
    ERRORS = Counter(
        "mailsluice_streams_errors_total",
        "Events a stream processor agent skipped after an error (undecodable or a bug), by agent.",
        ["agent"],
    )

    # --- campaign stats (streams/tally.py) ---
    CAMPAIGN_STATS = Counter(
        "mailsluice_streams_campaign_stats_published_total",
        "Campaign stats records the stream processors wrote to mailsluice.campaign-stats (one "
        "per changed campaign per publishing interval; campaigns are never label values).",
    )

    # --- engagement (streams/engaged.py): per pool and provider only, never tenant or campaign
    DELIVERED = Counter(
        "mailsluice_streams_delivered_total",
        "Deliveries the engagement counts divide by (open rate, click-through rate), by pool and "
        "provider (`other` for a raw domain).",
        ["pool", "provider"],
    )
    OPENS = Counter(
        "mailsluice_streams_opens_total",
        "Unique opens (once per message and recipient; a click counts as an open too), by pool, "
        "provider and kind: `all` (raw, machines too) or `human` (estimated human).",
        ["pool", "provider", "kind"],
    )
    CLICKS = Counter(
        "mailsluice_streams_clicks_total",
        "Unique clicks (once per message and recipient), by pool, provider and kind: `all` or "
        "`human` (not a machine's, not in an every-link burst).",
        ["pool", "provider", "kind"],
    )
    RETRACTED = Counter(
        "mailsluice_streams_human_retracted_total",
        "Human opens and clicks counted and then taken back when the message's clicks turned "
        'out to be an every-link burst (subtract from the kind="human" counts), by kind.',
        ["pool", "provider", "kind"],
    )
    EVERY_LINK = Counter(
        "mailsluice_streams_every_link_total",
        "Messages whose clicks hit several links within seconds (a security scanner), by pool "
        "and provider.",
        ["pool", "provider"],
    )
    ENGAGEMENT_KINDS = ("all", "human")
    RETRACTED_KINDS = ("open", "click")
    # --- engagement hygiene (streams/hygiene.py) ---
    UNENGAGED_LIFTED = Counter(
        "mailsluice_streams_unengaged_lifted_total",
        "Unengaged suppressions the stream processors lifted because the address opened or "
        "clicked again (a person's open or click, not a machine's).",
    )

    @staticmethod
    def pool_label(pool: str) -> str:
        """A pool name as a label value; empty or not a valid name -> other."""
        return pool if _PROVIDER_NAME.match(pool or "") else OTHER

    @staticmethod
    def type_label(event_type: str) -> str:
        return event_type if event_type in Streams.EVENT_TYPES else OTHER


for _reason in Streams.SUPPRESSION_REASONS:
    Streams.SUPPRESSIONS.labels(_reason)
for _agent in Streams.AGENTS:
    Streams.ERRORS.labels(_agent)
