"""The fault run's client (scripts/chaos.py): SMTP into ingest at a steady rate over several
connections, one message per unique recipient, each answer recorded: 250 (accepted), a 4xx/5xx
(refused), or no answer to DATA (unanswered). A message whose connection fails before DATA
cannot have been queued; it goes again on a new connection. A message answered 4xx goes again
later, the same bytes, as an MTA sends its queue file again; nothing else is sent twice."""

from __future__ import annotations

import asyncio
import os
import time
from email.utils import formatdate
from typing import Any

import chaos_plan as plan

SENDER = "chaos@chaos.example"
RECONNECT_AFTER = 400  # messages per connection (ingest closes a connection at 1000)
CONNECT_GIVE_UP_S = 180.0  # ingest unreachable this long: the run cannot go on
UNSENT_TRIES = 20  # connections in a row that fail before DATA: ingest is broken, not down


def message(number: int, address: str, run: str) -> bytes:
    return (
        f"From: <{SENDER}>\r\nTo: <{address}>\r\nSubject: chaos {number}\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: <c{number}.{run}@chaos.example>\r\n"
        f"\r\nMessage {number} of fault run {run}.\r\n"
    ).encode()


async def connect(port: int) -> Any:
    """A connection to ingest, trying again while it is down (killed, restarting)."""
    import aiosmtplib

    deadline = time.monotonic() + CONNECT_GIVE_UP_S
    while True:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=port,
            start_tls=False,
            timeout=60,
            local_hostname="client.chaos.invalid",
        )
        try:
            await smtp.connect()
            await smtp.ehlo()
            return smtp
        except (aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest unreachable for {CONNECT_GIVE_UP_S:.0f} s") from exc
            await asyncio.sleep(0.2)  # back off before the next attempt


async def transaction(smtp: Any, address: str, body: bytes) -> tuple[str, int]:
    """('accepted'|'refused'|'unanswered'|'unsent', code). Unsent: the connection failed before
    DATA, so ingest cannot have queued it and the message is sent again on a new one."""
    import aiosmtplib

    try:
        await smtp.mail(SENDER)
        await smtp.rcpt(address)
    except aiosmtplib.SMTPResponseException as exc:
        return "refused", exc.code
    except (aiosmtplib.SMTPException, OSError):
        return "unsent", 0
    try:
        await smtp.data(body)
    except aiosmtplib.SMTPResponseException as exc:
        return "refused", exc.code
    except (aiosmtplib.SMTPException, OSError):
        return "unanswered", 0
    return "accepted", 250


class Connection:
    """One client connection to ingest, opened again when it broke or has sent its share."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.smtp: Any = None
        self.used = 0

    async def send(self, address: str, body: bytes) -> tuple[str, int]:
        """(verdict, code) of one message; sent again, on a new connection, while the
        connection fails before DATA (at most UNSENT_TRIES times)."""
        for _ in range(UNSENT_TRIES):
            if self.smtp is None or not self.smtp.is_connected or self.used >= RECONNECT_AFTER:
                self.close()
                self.smtp, self.used = await connect(self.port), 0
            verdict, code = await transaction(self.smtp, address, body)
            self.used += 1
            if verdict != "unsent":
                if verdict == "refused":
                    self.close()  # a fresh connection for the next, whatever this one's state
                return verdict, code
            self.close()
        raise RuntimeError(f"ingest closed the connection before DATA {UNSENT_TRIES} times")

    def close(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
        self.smtp = None


def temporary(verdict: str, code: int) -> bool:
    return verdict == "refused" and 400 <= code < 500


class Retries:
    """The client's queue of messages answered 4xx: each goes again `client_retry_s` after its
    answer, over one connection of its own, until it gets another answer or its tries run out.
    Answers come in time order, so a FIFO queue is in due order."""

    def __init__(self, config: plan.Config, port: int, tally: plan.Tally) -> None:
        self.config, self.tally = config, tally
        self.client = Connection(port)
        self.queue: asyncio.Queue[tuple[float, str, bytes, int] | None] = asyncio.Queue()

    def add(self, address: str, body: bytes, tries: int = 0) -> None:
        if tries < self.config.client_retries:
            due = asyncio.get_running_loop().time() + self.config.client_retry_s
            self.queue.put_nowait((due, address, body, tries + 1))

    async def run(self) -> None:
        """Until `finish()`, once every retry queued before or after it is done."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                entry = await self.queue.get()
                if entry is None:
                    if self.queue.empty():
                        return
                    self.queue.put_nowait(None)  # retries queued since go first
                    continue
                due, address, body, tries = entry
                await asyncio.sleep(max(0.0, due - loop.time()))  # the client's retry interval
                verdict, code = await self.client.send(address, body)
                self.tally.retried.add(address)
                self.tally.answered(address, verdict, code)
                if temporary(verdict, code):
                    self.add(address, body, tries)
        finally:
            self.client.close()

    def finish(self) -> None:
        self.queue.put_nowait(None)


async def inject(config: plan.Config, port: int, tally: plan.Tally, started: float) -> None:
    """Every message at its time (started + n / rate on the loop's clock) into ingest on
    `port`, over `connections` connections, each answer in `tally`; a connection that falls
    behind (ingest down or slow) catches up as fast as ingest answers. Returns once every
    message answered 4xx was sent again (see Retries)."""
    loop = asyncio.get_running_loop()
    run_id = os.urandom(3).hex()
    retries = Retries(config, port, tally)

    async def connection(first: int) -> None:
        client = Connection(port)
        try:
            for number in range(first, config.messages, config.connections):
                delay = started + number / config.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the injection's pace
                address = plan.recipient(number, run_id, config.destinations)
                body = message(number, address, run_id)
                verdict, code = await client.send(address, body)
                tally.answered(address, verdict, code)
                if temporary(verdict, code):
                    retries.add(address, body)
        finally:
            client.close()

    retrying = asyncio.create_task(retries.run())
    try:
        await asyncio.gather(*(connection(c) for c in range(config.connections)))
        retries.finish()
        await retrying
    finally:
        retrying.cancel()
