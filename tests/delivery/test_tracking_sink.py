"""Tracked mail through the real pipeline: a delivery worker on the real broker, finishing as the
service sets it up (tracking, then List-Unsubscribe, then the transport's DKIM signature), sends
to a real SMTP server. At the server each recipient's copy has its own verifying tokens in its
HTML links and pixel, its text part and unsubscribe link as they were, the MIME tree and
charsets kept, and a DKIM signature dkimpy verifies (so the signature covers the rewritten
bytes); a transactional message that does not ask goes out once, untouched."""

from __future__ import annotations

from typing import Any

from support import tracked_mail as mail
from support.delivery_worker import EventLog, Running, enqueue, envelope, new_pool, setup_pool
from support.opendkim import dkimpy_results

from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.consent.tokens import KeyRing
from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.service import DeliveryService
from mailsluice.delivery.transport.client import Transport
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.delivery.transport.signing import DkimSigner
from mailsluice.delivery.worker.finishing import Setup, wrap
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.delivery.worker.tracking import Tracking
from mailsluice.dkim.keys import generate
from mailsluice.dkim.plan import SigningPlan
from mailsluice.resolver import DnsSettings, make_resolver
from mailsluice.tracking.settings import TrackingSettings

DKIM_KEY = generate("origin.example", "t1", "rsa")
SETUP = Setup(
    UnsubscribeSettings(url=mail.UNSUBSCRIBE, keys="k1:" + "u" * 32),
    KeyRing({"k1": b"u" * 32}),
    Tracking(
        TrackingSettings(url="https://t.test", keys="t1:" + "t" * 32, default="all"),
        TrackingSettings(keys="t1:" + "t" * 32).key_ring(),
        mail.UNSUBSCRIBE,
    ),
)
assert SETUP.tracking is not None
KEYS = SETUP.tracking.keys


def body(env: Envelope) -> bytes:
    """The body of message `env`, which names it: base64 HTML for the second, QP for others."""
    variant = mail.related_base64() if env.queue_id.endswith("1") else mail.alternative_qp()
    return f"X-Test-Id: {env.queue_id}\r\n".encode() + variant


async def test_tracked_copies_reach_the_server_signed_with_their_own_tokens(
    kafka: Any, fake_mx: Any, dns_nameserver: str, dns_zone: Any
) -> None:
    dns_zone.set_txt(DKIM_KEY.record_name, [DKIM_KEY.dns_record()])
    ks = kafka.settings()
    pool = new_pool()
    await setup_pool(ks, pool)
    mx = fake_mx()
    outbound = OutboundSettings(static_routes=f"*={mx.address}", connect_timeout_s=5)
    signer = DkimSigner(SigningPlan([DKIM_KEY]))
    resolver = make_resolver(DnsSettings(nameservers=dns_nameserver))
    transport = wrap(Transport(outbound, resolver, signer=signer), setup=SETUP)
    service = DeliveryService(DeliverySettings(pool=pool, commit_interval_s=0.2), ks, transport)
    sender = "news@origin.example"
    rcpts = ("ann@dest.example", "bob@dest.example")
    envs = [
        envelope(pool, 0, rcpts, sender=sender, tenant="acme", campaign="spring"),
        envelope(pool, 1, rcpts, sender=sender, tracking="clicks"),
        envelope(pool, 2, ("cy@dest.example",), sender=sender, stream="transactional"),
    ]
    try:
        async with EventLog(ks, pool) as events, Running(service):
            await enqueue(ks, list(envs), body)
            await events.expect_final({(e.queue_id, r) for e in envs for r in e.recipients})
    finally:
        await transport.close()
    received = await mx.messages_arrived(5)
    assert len(received) == 5
    copies: dict[tuple[str, str], bytes] = {}
    for msg in received:
        assert dkimpy_results(msg.data, dns_nameserver) == {"t1": True}
        (rcpt,) = msg.rcpt_tos
        queue_id = str(mail.parsed(msg.data)["X-Test-Id"])
        copies[(queue_id, rcpt)] = msg.data
    for env in envs[:2]:
        for rcpt in rcpts:
            copy = copies[(env.queue_id, rcpt)]
            html = mail.html_of(copy)
            marks = mail.clicks(KEYS, html)
            assert [(m.link, m.target) for m in marks] == list(enumerate(mail.TARGETS))
            pixels = mail.opens(KEYS, html)
            assert len(pixels) == (1 if env.tracking != "clicks" else 0)
            assert {(m.recipient, m.queue_id) for m in [*marks, *pixels]} == {(rcpt, env.queue_id)}
            assert f'href="{mail.UNSUBSCRIBE_LINK}"' in html and "Grüße" in html
            assert mail.text_of(copy) == mail.text_of(body(env))
            assert shape(copy) == shape(body(env))
            assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in copy
    receipt = copies[(envs[2].queue_id, "cy@dest.example")]
    assert receipt.endswith(body(envs[2])) and b"https://t.test" not in receipt


def shape(data: bytes) -> list[tuple[str, str | None, str | None]]:
    return [
        (p.get_content_type(), p.get_boundary(), p.get_content_charset())
        for p in mail.parsed(data).walk()
    ]
