"""The shaper of a worker given none (a worker run without a shaping policy, and tests)."""

from __future__ import annotations

from collections.abc import Callable

from mailsluice.delivery.shaping.engine import PolicyShaper, uniform_policy
from mailsluice.delivery.shaping.settings import delivery_defaults
from mailsluice.delivery.worker.settings import DeliverySettings


def default_shaper(settings: DeliverySettings, wall: Callable[[], float]) -> PolicyShaper:
    """Every destination held to the MAILSLUICE_DELIVERY_DEST_* limits as configured (nothing
    learned, no provider rules); a new destination starts with its burst."""
    rule = delivery_defaults(
        settings.dest_max_concurrency, settings.dest_max_rate, settings.dest_burst
    )
    assert rule is not None  # every field given
    policy = uniform_policy(rule)
    return PolicyShaper(policy, settings.pool, wall=wall, prime_new=False, adaptive=False)
