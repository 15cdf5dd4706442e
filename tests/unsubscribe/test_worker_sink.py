"""A delivery worker on the real broker sends bulk mail to a real SMTP sink (Postfix's
smtp-sink): each recipient's copy in its own transaction, with a List-Unsubscribe whose token
names that recipient; a transactional message goes out once, unchanged."""

from __future__ import annotations

import re
from typing import Any

from support.delivery_worker import EventLog, Running, enqueue, envelope, new_pool, setup_pool
from support.eventually import eventually

from mailsluice.consent.tokens import KeyRing
from mailsluice.delivery.service import DeliveryService
from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.resolver import DnsSettings, make_resolver

KEYS = KeyRing({"k1": b"w" * 32})
# both URIs, with one token, folded before the mailto (smtp-sink dumps with LF line ends)
LINKS = re.compile(
    rb"\nList-Unsubscribe: <https://unsub\.test/u/([a-z2-7]+)>,\n"
    rb" <mailto:unsubscribe\+\1@unsub\.test>\n"
)
BODY = b"From: news@acme.example\r\nSubject: weekly\r\n\r\nhello\r\n"


def rcpt_of(dump: bytes) -> list[str]:
    """The RCPT TO addresses smtp-sink recorded for one dumped message."""
    return [a.decode() for a in re.findall(rb"^X-Rcpt-Args: <([^>]+)>", dump, re.M)]


async def test_bulk_copies_carry_their_recipients_token_to_the_sink(
    kafka: Any, smtp_sink: Any, dns_nameserver: str, monkeypatch: Any
) -> None:
    # configured as a worker process is: the worker wraps its transport from these
    monkeypatch.setenv("MAILSLUICE_UNSUBSCRIBE_URL", "https://unsub.test")
    monkeypatch.setenv("MAILSLUICE_UNSUBSCRIBE_MAILTO_DOMAIN", "unsub.test")
    monkeypatch.setenv("MAILSLUICE_UNSUBSCRIBE_KEYS", "k1:" + "w" * 32)
    ks = kafka.settings()
    pool = new_pool()
    await setup_pool(ks, pool)
    sink = smtp_sink(dump=True)
    outbound = OutboundSettings(static_routes=f"*={sink.address}", connect_timeout_s=5)
    transport = Transport(outbound, make_resolver(DnsSettings(nameservers=dns_nameserver)))
    service = DeliveryService(
        DeliverySettings(pool=pool, commit_interval_s=0.2),
        ks,
        transport,
        mover=False,
    )
    rcpts = ("ann@b.example", "bob@b.example", "cy@b.example")
    bulk = envelope(pool, 0, rcpts, sender="news@acme.example", tenant="acme", list_id="weekly")
    receipt = envelope(pool, 1, ("dee@b.example", "eve@b.example"), stream="transactional")
    try:
        async with EventLog(ks, pool) as events, Running(service):
            await enqueue(ks, [bulk, receipt], BODY)
            await events.expect_final(
                {(e.queue_id, r) for e in (bulk, receipt) for r in e.recipients}
            )
        dumps = await eventually(
            lambda: len(sink.dumped_messages()) >= 4 and sink.dumped_messages(),
            within=10,
            what="four messages in smtp-sink's dump",
        )
    finally:
        await transport.close()
    assert len(dumps) == 4
    by_rcpts = {tuple(rcpt_of(d)): d for d in dumps}
    assert set(by_rcpts) == {
        ("ann@b.example",),
        ("bob@b.example",),
        ("cy@b.example",),
        (
            "dee@b.example",
            "eve@b.example",
        ),
    }
    for rcpt in rcpts:
        dump = by_rcpts[(rcpt,)]
        dump = dump.replace(b"\r\n", b"\n")
        found = re.search(LINKS, dump)
        assert found is not None, dump[:600]
        claim = KEYS.verify(found.group(1).decode())
        assert (claim.recipient, claim.scope) == (rcpt, "list:acme/weekly")
        assert b"\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\n" in dump
        assert b"One-Click\n" + BODY.replace(b"\r\n", b"\n") in dump  # the fields, then the message
    assert b"List-Unsubscribe" not in by_rcpts[("dee@b.example", "eve@b.example")]
