"""Metrics of DKIM signing in delivery workers."""

from __future__ import annotations

from prometheus_client import Counter

DKIM_ALGORITHMS = ("rsa", "ed25519")
UNSIGNED_REASONS = ("no_key", "bad_message")

SIGNATURES = Counter(
    "mailsluice_delivery_dkim_signatures_total",
    "DKIM signatures put on outgoing messages, by key algorithm.",
    ["algorithm"],
)
UNSIGNED = Counter(
    "mailsluice_delivery_dkim_unsigned_total",
    "Messages sent without a DKIM signature while signing is configured: no key for the From "
    "domain nor the pool's domain (no_key), or a header section that does not parse.",
    ["reason"],
)

for _algorithm in DKIM_ALGORITHMS:
    SIGNATURES.labels(_algorithm)
for _reason in UNSIGNED_REASONS:
    UNSIGNED.labels(_reason)
