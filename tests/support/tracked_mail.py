"""Messages for tracking at delivery (tests/delivery/worker/test_tracking.py and the sink test):
multipart/alternative with a quoted-printable ISO-8859-1 HTML part, and one with a base64 UTF-8
HTML part inside multipart/related with an inline image; and what to read back from a copy."""

from __future__ import annotations

import base64
import email
import re
from email.message import EmailMessage
from email.policy import default

from mailsluice.tracking.tokens import Mark, TrackingKeys

TRACKER = "https://t.test"
UNSUBSCRIBE = "https://unsub.test"
# A link to the unsubscribe service in the body: never redirected.
UNSUBSCRIBE_LINK = f"{UNSUBSCRIBE}/u/static-page"
TARGETS = ("https://shop.test/spring?a=1&b=2", "https://shop.test/news")
_TOKEN = r"([A-Za-z0-9_-]{20,})"


def _lines(*lines: str | bytes) -> bytes:
    return b"\r\n".join(x.encode() if isinstance(x, str) else x for x in lines)


def _head(sender: str) -> tuple[str, ...]:
    """The header of both messages, and their text part up to its first link."""
    return (
        f"From: News <{sender}>",
        "To: readers@dest.example",
        "Subject: Spring",
        "MIME-Version: 1.0",
        'Content-Type: multipart/alternative; boundary="alt"',
        "",
        "--alt",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"Shop {TARGETS[0]}",
    )


def alternative_qp(sender: str = "news@origin.example") -> bytes:
    """Text and a quoted-printable HTML part in ISO-8859-1 (its umlauts are not UTF-8)."""
    return _lines(
        *_head(sender),
        f"Leave {UNSUBSCRIBE_LINK}",
        "--alt",
        "Content-Type: text/html; charset=iso-8859-1",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        b'<html><body><p>Gr=FC=DFe</p><a href=3D"https://shop.test/spring?a=3D1&amp;b=3D2">S=',
        b'hop</a> <a href=3D"https://shop.test/news">News</a>',
        f'<a href=3D"{UNSUBSCRIBE_LINK}">Leave</a></body></html>'.encode(),
        "--alt--",
        "",
    )


def related_base64(sender: str = "news@origin.example") -> bytes:
    """Text, and a base64 UTF-8 HTML part with an inline image in multipart/related."""
    html = (
        f'<html><body><p>Grüße</p><img src="cid:logo"><a href="{TARGETS[0].replace("&", "&amp;")}">'
        f'Shop</a><a href="{TARGETS[1]}">News</a><a href="{UNSUBSCRIBE_LINK}">Leave</a>'
        "</body></html>"
    )
    encoded = base64.encodebytes(html.encode()).decode().replace("\n", "\r\n").rstrip()
    return _lines(
        *_head(sender),
        "--alt",
        'Content-Type: multipart/related; boundary="rel"',
        "",
        "--rel",
        "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: base64",
        "",
        encoded,
        "--rel",
        "Content-Type: image/png",
        "Content-ID: <logo>",
        "Content-Transfer-Encoding: base64",
        "",
        base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode(),
        "--rel--",
        "--alt--",
        "",
    )


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=default)
    assert isinstance(message, EmailMessage) and not message.defects
    for part in message.walk():
        assert not part.defects, part.defects
    return message


def html_of(data: bytes) -> str:
    body = parsed(data).get_body(("html",))
    assert body is not None
    return str(body.get_content())


def text_of(data: bytes) -> str:
    body = parsed(data).get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def clicks(keys: TrackingKeys, html: str) -> list[Mark]:
    return [keys.verify(t) for t in re.findall(rf'href="{TRACKER}/c/{_TOKEN}"', html)]


def opens(keys: TrackingKeys, html: str) -> list[Mark]:
    return [keys.verify(t) for t in re.findall(rf'src="{TRACKER}/o/{_TOKEN}"', html)]
