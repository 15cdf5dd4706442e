"""The retry mover's view of the control topic: resume and retry-now commands release held
retries.

`mailsluice destinations resume|retry-now KEY` writes a command to the compacted topic
mailsluice.control (contracts/control.py). Workers lift their in-memory holds on it; the mover
follows the same topic, so deferred mail of that destination already on a tier topic comes back
now rather than at its not_before, which was computed for a hold that no longer stands
(hold.py says which records each command releases). Like the workers, it reads the topic from
the beginning at start (the latest command per destination) and then follows it; decoding is
contracts/control.py's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from mailsluice.contracts.control import Command, ControlState
from mailsluice.contracts.topics import CONTROL_TOPIC
from mailsluice.kafka.admin import control_topics, ensure_topics
from mailsluice.kafka.compacted import CompactedView
from mailsluice.kafka.retrying import KAFKA_DOWN, until_kafka_answers
from mailsluice.kafka.settings import KafkaSettings

log = logging.getLogger(__name__)

# Wait between attempts to reach the control topic.
START_RETRY_S = 2.0


# The commands that release held records; a suspend holds nothing here (the worker defers).
RELEASING = ("resume", "retry-now")


class ReleaseFollower:
    """Calls `on_release` with every resume and retry-now command on the control topic: the
    ones there at start (so a restarted mover releases what it released before) and each new
    one."""

    def __init__(
        self,
        kafka: KafkaSettings,
        on_release: Callable[[Command], None],
        *,
        client_id: str = "mailsluice-retry-mover-control",
    ) -> None:
        self.kafka = kafka
        self.on_release = on_release
        self.client_id = client_id
        self.state = ControlState()
        self.caught_up = False  # read the topic up to its end once
        self._view: CompactedView | None = None

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        cmd = self.state.apply(key, value)
        if cmd is not None and cmd.action in RELEASING:
            self.on_release(cmd)

    async def run(self) -> None:
        """Follow until cancelled; Kafka errors are retried, never fatal (a release is an
        operator's shortcut, the mover moves everything on time without it)."""
        try:
            await until_kafka_answers(
                self._start,
                retry_s=START_RETRY_S,
                errors=(*KAFKA_DOWN, RuntimeError),
                on_failure=self._not_started,
            )
            assert self._view is not None
            await self._view.follow()
        finally:
            await self._close()

    async def _start(self) -> None:
        await ensure_topics(self.kafka, control_topics(self.kafka))
        self._view = CompactedView(self.kafka, CONTROL_TOPIC, self.apply, client_id=self.client_id)
        await self._view.start()
        self.caught_up = True

    async def _not_started(self, exc: Exception) -> None:
        log.warning("retry mover cannot follow the control topic (%s); retrying", exc)
        await self._close()

    async def _close(self) -> None:
        view, self._view = self._view, None
        if view is not None:
            with contextlib.suppress(Exception):
                await view.stop()
