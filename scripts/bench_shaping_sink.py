"""The SMTP sink of `make bench`'s shaping stage (scripts/bench_shaping.py): it accepts every
message and records when it arrived and which worker sent it (the first label of its EHLO
name, which the bench sets per worker: workers may share a source address)."""

from __future__ import annotations

import threading
import time
from typing import Any


class StampSink:
    """An aiosmtpd sink recording (arrival time, client's worker name) of every message."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stamps: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._controller: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.monotonic()
        with self._lock:
            self.stamps.append((now, str(session.host_name).partition(".")[0]))
        return "250 2.0.0 OK"

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.stamps)

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname=self.host, port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
