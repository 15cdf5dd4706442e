"""A delivery worker's `Attempts` for unit tests: no Kafka (outcome records are acknowledged
at once and kept in `attempts.producers.sent`), a fixed clock, the default policy."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, cast

from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.scheduler import Scheduler
from mailsluice.delivery.worker.attempts import Attempts, Item
from mailsluice.delivery.worker.dedup import DeliveredCache
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.policy.shaping import default_policy


class AckedProducers:
    """Acknowledges every outcome record at once."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send_all(self, sends: list[Any]) -> None:
        self.sent.extend(sends)


def attempts_for(
    pool: str,
    transport: Any,
    finished: list[Item] | None = None,
    *,
    shaper: PolicyShaper | None = None,
    build_dsn: Callable[..., bytes] | None = None,
    wall: float = 0.0,
    settings: DeliverySettings | None = None,
) -> Attempts:
    """Attempts of `pool` sending through `transport`; finished items go to `finished`."""
    shaper = PolicyShaper(default_policy(), pool) if shaper is None else shaper
    attempts = Attempts(
        settings or DeliverySettings(pool=pool),
        transport,
        shaper,
        Scheduler(shaper, 5.0),
        DeliveredCache(10),
        finish=finished.append if finished is not None else lambda _item: None,
        release=lambda _item: None,
        wake=lambda: None,
        kafka_state=lambda _error: None,
        build_dsn=build_dsn,
        wall=lambda: wall,
        mono=lambda: 0.0,
        rng=random.Random(1),
    )
    attempts.producers = cast(Any, AckedProducers())
    return attempts
