"""The fault run's client (scripts/chaos.py): SMTP into ingest at a steady rate over several
connections, one message per unique recipient, each answer recorded: 250 (accepted), a 4xx/5xx
(refused), or no answer to DATA (unanswered). A message whose connection fails before DATA
cannot have been queued; it goes again on a new connection. No message is sent twice."""

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


async def inject(config: plan.Config, port: int, tally: plan.Tally, started: float) -> None:
    """Every message at its time (started + n / rate on the loop's clock) into ingest on
    `port`, over `connections` connections, each answer in `tally`; a connection that falls
    behind (ingest down or slow) catches up as fast as ingest answers."""
    loop = asyncio.get_running_loop()
    run_id = os.urandom(3).hex()

    async def connection(first: int) -> None:
        client = Connection(port)
        try:
            for number in range(first, config.messages, config.connections):
                delay = started + number / config.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the injection's pace
                address = plan.recipient(number, run_id, config.destinations)
                verdict, code = await client.send(address, message(number, address, run_id))
                tally.sent_to.add(address)
                if verdict == "accepted":
                    tally.accepted.add(address)
                elif verdict == "refused":
                    tally.refused[address] = code
                else:
                    tally.unanswered.add(address)
        finally:
            client.close()

    await asyncio.gather(*(connection(c) for c in range(config.connections)))
