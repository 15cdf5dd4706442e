"""The SMTP sink of `make bench`'s shaping stage (scripts/bench_shaping.py): it accepts every
message and records when it arrived and which worker sent it (the first label of its EHLO
name, which the bench sets per worker: workers may share a source address)."""

from __future__ import annotations

import time
from typing import Any

from bench_tools import AiosmtpdSink


class StampSink(AiosmtpdSink):
    """An aiosmtpd sink recording (arrival time, client's worker name) of every message."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.stamps: list[tuple[float, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        with self._lock:
            self.stamps.append((now, str(session.host_name).partition(".")[0]))
        return "250 2.0.0 OK"

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.stamps)
