"""Helpers for transport tests: a message, its envelope, outbound settings with short timeouts,
a resolver that asks the test DNS server."""

from __future__ import annotations

import time
from typing import Any

from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.transport.settings import OutboundSettings
from mailsluice.resolver import DnsSettings, make_resolver
from support.dns_server import DnsServer

MESSAGE = b"From: a@sender.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


def envelope(
    *rcpts: str, sender: str = "a@sender.test", key: str | None = None, pool: str = "default"
) -> Envelope:
    """A queue envelope for `rcpts`, routed by the first one's domain unless `key` is given."""
    return Envelope(
        queue_id="Q1",
        pool=pool,
        sender=sender,
        recipients=rcpts,
        routing_key=key or rcpts[0].rpartition("@")[2],
        received_at=time.time(),
    )


def settings(**kw: Any) -> OutboundSettings:
    base: dict[str, Any] = {
        "ehlo_name": "out.mailsluice.test",
        "connect_timeout_s": 2.0,
        "greeting_timeout_s": 5.0,
        "command_timeout_s": 5.0,
        "mail_timeout_s": 5.0,
        "rcpt_timeout_s": 5.0,
        "data_init_timeout_s": 5.0,
        "data_end_timeout_s": 5.0,
    }
    base.update(kw)
    return OutboundSettings(**base)


def resolver_for(dns: DnsServer) -> Any:
    return make_resolver(DnsSettings(nameservers=dns.nameserver, timeout_s=2.0))
