"""DKIM signing in the transport, checked on what a real SMTP server received, by verifiers that
are not ours (OpenDKIM, dkimpy): bare-LF input, long lines, 8-bit bodies, dot-stuffed lines.
Also the choice of signing domain, and mail that goes unsigned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.metrics import sample
from support.opendkim import dkimpy_results, opendkim_results
from support.transport import envelope, settings

from mailsluice.delivery.transport.signing import DkimSigner, from_domain
from mailsluice.dkim.keys import generate
from mailsluice.dkim.plan import SigningPlan

T = 1_796_000_000.0
KEYS = [generate("example.com", "r1", "rsa"), generate("example.com", "e1", "ed25519")]
POOL_KEY = generate("pool.example", "p1", "ed25519")
HEAD = b"From: Alice <alice@example.com>\nTo: bob@example.test\nSubject: %s\n"

MESSAGES = {
    "bare_lf": HEAD % b"lf" + b"\nline one\nline two\r\nmixed\rCR\n",
    # Lines up to RFC 5322's 998 characters (a longer one is refused by the MX, signed or not),
    # a long header field and a folded one.
    "long_lines": HEAD % (b"long " * 60)
    + b"X-Folded: one\n two\n\tthree\n"
    + b"Content-Type: text/plain\n\n"
    + b"x" * 998
    + b"\n"
    + b"word " * 199
    + b"\n",
    "eight_bit": HEAD % b"8bit"
    + b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
    + b"Content-Transfer-Encoding: 8bit\n\nGr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln, caf\xe9\n",
    "dots": HEAD % b"dots" + b"\n.hidden line\n..two dots\n.\nend\n",
}


@pytest.mark.parametrize("case", sorted(MESSAGES))
async def test_received_bytes_verify_with_opendkim_and_dkimpy(
    case: str, fake_mx: Any, transports: Any, dns_zone: Any, tmp_path: Path
) -> None:
    for key in KEYS:
        dns_zone.set_txt(key.record_name, [key.dns_record()])
    mx = fake_mx()
    signer = DkimSigner(SigningPlan(KEYS), clock=lambda: T)
    t = transports(settings(static_routes=f"*={mx.address}"), signer=signer)
    (result,) = await t.send(envelope("bob@example.test"), MESSAGES[case])
    assert result.kind == "delivered", result
    (msg,) = await mx.messages_arrived(1)
    assert msg.data.count(b"DKIM-Signature:") == 2
    assert opendkim_results(msg.data, KEYS, tmp_path) == {"r1": "pass", "e1": "pass"}
    assert dkimpy_results(msg.data, dns_zone.nameserver) == {"r1": True, "e1": True}
    if case == "dots":  # signed before dot-stuffing: the wire has the doubled dots
        assert b"\r\n..hidden line\r\n...two dots\r\n..\r\nend" in mx.sessions[0].wire


def test_the_from_domain_signs_when_it_has_a_key_else_the_pool_domain() -> None:
    plan = SigningPlan([*KEYS, POOL_KEY])
    signer = DkimSigner(plan, "pool.example", clock=lambda: T)
    env = envelope("bob@example.test")
    own = signer(env, MESSAGES["bare_lf"])
    assert own.count(b"d=example.com;") == 2
    other = MESSAGES["bare_lf"].replace(b"alice@example.com", b"news@tenant.example")
    assert b"d=pool.example;" in signer(env, other)
    assert from_domain(b"From: =?utf-8?q?A?=\r\n <A@Sub.Example.COM>\r\n\r\n") == "sub.example.com"
    assert from_domain(b"To: x@y\r\n\r\nFrom: body@not.header\r\n") == ""


def test_without_a_key_the_message_goes_unsigned_and_is_counted() -> None:
    signer = DkimSigner(SigningPlan(KEYS), "", clock=lambda: T)
    other = MESSAGES["bare_lf"].replace(b"alice@example.com", b"news@tenant.example")
    before = sample("mailsluice_delivery_dkim_unsigned_total", reason="no_key")
    out = signer(envelope("bob@example.test"), other)
    assert b"DKIM-Signature" not in out
    assert out == other.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    after = sample("mailsluice_delivery_dkim_unsigned_total", reason="no_key")
    assert after == before + 1


@pytest.mark.parametrize(
    ("field", "domain"),
    [
        (b"From: a@Example.COM", "example.com"),
        (b'From: "x@evil.test" <a@example.com>', "example.com"),
        (b"From: News\r\n <news@list.example.>", "list.example"),
        (b"From: (comment) a@example.com (more)", "example.com"),
        (b"From: undisclosed", ""),
    ],
)
def test_from_domain(field: bytes, domain: str) -> None:
    assert from_domain(b"To: t@t.test\r\n" + field + b"\r\nSubject: s\r\n\r\nbody\r\n") == domain
