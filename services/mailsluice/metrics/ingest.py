"""Metrics of the SMTP ingest, and of the feedback-loop complaints it takes in."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# --- ingest -------------------------------------------------------------------------------------


class Ingest:
    """Metrics of the SMTP ingest (`from mailsluice.metrics import Ingest as metrics`)."""

    CONNECTIONS = Counter("mailsluice_ingest_connections_total", "SMTP connections accepted.")
    CONNECTIONS_OPEN = Gauge("mailsluice_ingest_connections_open", "SMTP connections now open.")
    TRANSACTIONS = Counter(
        "mailsluice_ingest_transactions_total",
        "Message transactions finished at DATA, by result.",
        ["result"],
    )
    TRANSACTION_RESULTS = ("queued", "tempfail", "rejected", "too_big", "aborted")
    RECIPIENTS = Counter(
        "mailsluice_ingest_recipients_total",
        "Recipients judged at RCPT, by result (accepted/rejected) and reject reason.",
        ["result", "reason"],
    )
    BYTES = Counter("mailsluice_ingest_bytes_total", "Bytes of messages queued to Kafka.")
    PUBLISH_SECONDS = Histogram(
        "mailsluice_ingest_kafka_publish_seconds",
        "Time from the first send to the last Kafka acknowledgement of a message.",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
    )
    TRANSACTION_SECONDS = Histogram(
        "mailsluice_ingest_transaction_seconds",
        "Time from MAIL FROM to the reply after DATA.",
        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    )
    EVENTS_FAILED = Counter(
        "mailsluice_ingest_events_failed_total", "Events that could not be written to Kafka."
    )
    PROTOCOL_VIOLATIONS = Counter(
        "mailsluice_ingest_protocol_violations_total",
        "Connections closed for protocol violations, by kind.",
        ["kind"],
    )
    VIOLATION_KINDS = (
        "early_talker",
        "pipelining",
        "too_many_errors",
        "too_many_messages",
        "too_many_junk_commands",
        "too_many_aborted",
    )
    CONNECTIONS_REFUSED = Counter(
        "mailsluice_ingest_connections_refused_total",
        "Connections refused with 421 before the greeting, by the cap reached (per_ip, global).",
        ["reason"],
    )
    REFUSED_REASONS = ("per_ip", "global")
    DATA_BYTES_RESERVED = Gauge(
        "mailsluice_ingest_data_reserved_bytes",
        "Bytes of the in-flight DATA budget reserved now (declared SIZE or what has arrived).",
    )
    DATA_BUDGET_REFUSED = Counter(
        "mailsluice_ingest_data_budget_refused_total",
        "Transactions refused for want of the DATA budget, by stage: 452 4.3.1 at MAIL or "
        "before the 354 (mail, data), 421 4.3.1 and close during the transfer (transfer).",
        ["stage"],
    )
    BUDGET_STAGES = ("mail", "data", "transfer")
    # AUTH abuse and sender ownership (ingest/auth_guard.py, ingest/smtp_auth.py, owners).
    AUTH_ATTEMPTS = Counter(
        "mailsluice_ingest_auth_attempts_total",
        "AUTH attempts by result (locked: refused with 454 4.7.0 during a lockout).",
        ["result"],
    )
    AUTH_RESULTS = ("success", "failure", "locked", "authzid_refused")
    AUTH_LOCKOUTS = Counter(
        "mailsluice_ingest_auth_lockouts_total",
        "AUTH lockouts begun, by what is locked (a client IP or a username).",
        ["by"],
    )
    AUTH_LOCKOUT_BY = ("ip", "user")
    SENDERS_NOT_OWNED = Counter(
        "mailsluice_ingest_senders_not_owned_total",
        "Senders refused (550 5.7.1) for a domain the user does not own, by where: "
        "MAIL FROM (envelope) or the From header (header).",
        ["where"],
    )
    SENDER_WHERE = ("envelope", "header")


for _result in Ingest.TRANSACTION_RESULTS:
    Ingest.TRANSACTIONS.labels(_result)
for _kind in Ingest.VIOLATION_KINDS:
    Ingest.PROTOCOL_VIOLATIONS.labels(_kind)
for _reason in Ingest.REFUSED_REASONS:
    Ingest.CONNECTIONS_REFUSED.labels(_reason)
for _stage in Ingest.BUDGET_STAGES:
    Ingest.DATA_BUDGET_REFUSED.labels(_stage)
for _auth in Ingest.AUTH_RESULTS:
    Ingest.AUTH_ATTEMPTS.labels(_auth)
for _by in Ingest.AUTH_LOCKOUT_BY:
    Ingest.AUTH_LOCKOUTS.labels(_by)
for _where in Ingest.SENDER_WHERE:
    Ingest.SENDERS_NOT_OWNED.labels(_where)


# --- feedback-loop complaints at ingest (FBL intake, ingest/feedback.py) ------------------------

# Why a message to a feedback-loop address was refused (550 5.6.0).
FEEDBACK_REJECT_REASONS = ("not_report", "malformed", "not_complaint", "no_recipient")

INGEST_COMPLAINTS = Counter(
    "mailsluice_ingest_complaints_total",
    "Spam complaints received as feedback-loop (ARF) reports and written to the events topic, "
    "by the original message's pool (`other` when the report names none of ours) and the "
    "complaining recipient's provider.",
    ["pool", "provider"],
)
INGEST_FEEDBACK_REJECTED = Counter(
    "mailsluice_ingest_feedback_rejected_total",
    "Messages to a feedback-loop address refused as no usable complaint report, by reason.",
    ["reason"],
)
for _reason in FEEDBACK_REJECT_REASONS:
    INGEST_FEEDBACK_REJECTED.labels(_reason)


INGEST_REJECT_REASONS = (
    "syntax",
    "suppressed",
    "null_mx",
    "no_domain",
    "dns_timeout",
    "too_many_recipients",
    "relay_denied",
    "auth_required",
    "pool_denied",
    "bad_stream",
    "too_big",
    "sender_not_owned",
    "duplicate_header",  # a field RFC 5322 allows once, given twice (550 5.6.0)
    "private_destination",  # MX hosts with only non-global addresses (550 5.4.4)
    "bad_unsubscribe",  # an unsubscribe+TOKEN address whose token does not verify (550 5.1.1)
    # tenants (issue 15): over the tenant's quota (452 4.3.1); a bad campaign or tag (550 5.6.0)
    "over_quota",
    "bad_labels",
)
