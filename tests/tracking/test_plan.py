"""A message's tracking plan, made once and applied per recipient: every copy is the one
`rewrite` makes of the message alone, byte for byte the copy made before the plan existed (the
digests below are of the copies the one-pass rewrite of commit 5844a9f made), and a plan keeps
nothing of one copy into the next."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from support.tracked_mail import UNSUBSCRIBE, alternative_qp, related_base64

from mailsluice.tracking.rewrite import ClickUrl, Keep, OpenUrl, Unchanged, _Run, plan, rewrite

RECIPIENTS = ("a@d.test", "bob.longer-name@dest.example", "c@d.test")


def _lines(*lines: str | bytes) -> bytes:
    return b"\r\n".join(x.encode() if isinstance(x, str) else x for x in lines)


def _single(content_type: str, *header_and_body: str | bytes) -> bytes:
    return _lines("From: a@s.test", "MIME-Version: 1.0", content_type, *header_and_body)


LINKS = "".join(f'<a href="https://shop.test/p/{i}?a=1&amp;b=2">Item {i}</a> ' for i in range(12))
FIXTURES: dict[str, bytes] = {
    "qp-latin1": alternative_qp(),
    "base64-related": related_base64(),
    # Rewritten lines grow past 998 octets: the part becomes quoted-printable (field replaced).
    "7bit-long": _single(
        "Content-Type: text/html",
        "Content-Transfer-Encoding: 7bit",
        "",
        "<html><body>" + LINKS + "x" * 400 + "</body></html>",
        "",
    ),
    # No Content-Transfer-Encoding field, non-ASCII, lines growing long: one is added.
    "latin1-no-field": _single(
        "Content-Type: text/html; charset=iso-8859-1",
        "",
        b"<p>Gr\xfc\xdfe " + LINKS.encode() * 3 + b"</p>",
    ),
    "8bit-short": _single(
        "Content-Type: text/html; charset=iso-8859-1",
        "Content-Transfer-Encoding: 8bit",
        "",
        b"<p>Gr\xfc\xdfe " + LINKS[:60].encode() + b"</p>",
    ),
    # CRLF lines (b2a_qp's CRLF mode), and one long line (its bare LF mode).
    "qp-crlf-lines": _single(
        "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        "<html>",
        "<body>",
        *(f'<p>Caf=C3=A9 <a href=3D"https://x.test/{i}">{i}</a></p>' for i in range(10)),
        *(f"<p>Line {i} =C3=A9t=C3=A9 .</p>" for i in range(10)),
        *(f'<p><a href=3D"https://x.test/{i}">{i}</a></p>\t' for i in range(10, 20)),
        "</body>",
        "</html>",
    ),
    "qp-one-line": _single(
        "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        "<html><body>"
        + "".join(f'<a href=3D"https://x.test/{i}">caf=C3=A9 {i}</a>=\r\n' for i in range(40))
        + "</body></html>",
    ),
    # A first line ending in a bare LF (b2a_qp's LF mode), and a bare CR before a line break:
    # b2a_qp passes the CR through, so the CRLF it ends up next to is not a bare LF.
    "qp-bare-cr": _single(
        "Content-Type: text/html",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        '<p>a=0Db <a href=3D"https://x.test/">x</a></p>=0A<p>' + "y" * 70 + "=",
        "z" * 70 + "</p>=0D",
        "<p>end</p>",
    ),
    "base64-no-break": _single(
        "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: base64",
        "",
        base64.b64encode(("<p>Grüße " + LINKS + "</p>").encode()).decode(),
    ),
    "no-html": _single("Content-Type: text/plain", "", "https://x.test/"),
    "malformed": b"no header at all",
    "charset": _single("Content-Type: text/html; charset=x-unknown", "", "<a href='https://x'>"),
}
# sha256 over every copy of the fixture, for each choice below and each recipient in turn.
OLD = {
    "7bit-long": "149320eb5543753943359104fc965aaf675e44eeba6fc2387a9fc67460d0e997",
    "8bit-short": "cbea81daf8e3fc378fa4402ad036989ca49d9005d10a06f50e6423301e01101f",
    "base64-no-break": "20f875ba7b23f1dbc6aaf681bdcdfe9bfa22b7a69db00f9625e44e8606e6c7c1",
    "base64-related": "5e5c6a18aa84bafc92acfd27564c30ed63f2871dd33046ad48229c6d0030973a",
    "charset": "062c333277f5d2eb7abae17b303907774e5512f6b6e77bf485abfb0ed6d8e34c",
    "latin1-no-field": "a30dd26ef810f6d2fe03222a8d8e88e3165303d41788f4dbfaad41880b236bce",
    "malformed": "562898815f954015a374e8d2ccf5385de6cb1297d4659d6002ceef9909d1c65b",
    "no-html": "eeeaad807d8dea47ae365f1441c4c1fdcb93a3f1a5d6497f260c34058c2ecbef",
    "qp-bare-cr": "0872ca9f727d009eafceced88fc41efe37272af089a14423ce69c81ba60fa867",
    "qp-crlf-lines": "0c83948fe6be84512a487cd97d2ff6107b39bf5fcbe930fb9b906694bf74a530",
    "qp-latin1": "b00b9cc1cee60579dcc33a1a0843879d107b0b24334932fce0c795d28a0281de",
    "qp-one-line": "cf3994680e6c654b3b2de4e7a54c80c1264d4fa95f38472b72b340713fbb4d97",
}


def _keep_unsubscribe(target: str) -> bool:
    return target.startswith(UNSUBSCRIBE)


def _keep_all(_target: str) -> bool:
    return True


Choice = tuple[bool, Keep | None]
# clicks and opens (unsubscribe links kept), opens only, clicks only
CHOICES: tuple[Choice, ...] = ((True, _keep_unsubscribe), (True, _keep_all), (False, None))


def urls(recipient: str, opens: bool) -> tuple[ClickUrl, OpenUrl | None]:
    """A recipient's own URLs, of a length that differs between recipients (QP lines move)."""

    def click(index: int, target: str) -> str:
        return f"https://t.test/c/{recipient}/{index}?t={target}&n={len(target)}"

    def opened() -> str:
        return f"https://t.test/o/{recipient}?a=1&b=2"

    return click, opened if opens else None


def copies(make: Callable[[ClickUrl, OpenUrl | None, Keep | None], bytes]) -> list[bytes]:
    made = []
    for opens, keep in CHOICES:
        for recipient in RECIPIENTS:
            click, opened = urls(recipient, opens)
            made.append(make(click, opened, keep))
    return made


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_a_plan_applied_per_recipient_makes_the_copies_rewrite_made(name: str) -> None:
    message = FIXTURES[name]
    planned = plan(message)
    from_plan = copies(lambda c, o, k: planned.apply(c, o, k).message)
    alone = copies(lambda c, o, k: rewrite(message, c, o, k).message)
    assert from_plan == alone
    assert len(set(from_plan)) == (1 if planned.unchanged else len(from_plan))
    assert hashlib.sha256(b"\0".join(from_plan)).hexdigest() == OLD[name]


def test_quoted_printable_lines_without_a_link_are_encoded_once() -> None:
    (part,) = plan(FIXTURES["qp-crlf-lines"]).parts
    assert [type(run) for run in part.runs] == [bytes, _Run, bytes, _Run, bytes]
    (part,) = plan(FIXTURES["qp-bare-cr"]).parts  # a lone CR: the body is encoded whole
    assert [type(run) for run in part.runs] == [_Run]


def test_the_plan_says_why_a_message_stays_as_it_is() -> None:
    assert plan(FIXTURES["no-html"]).unchanged is Unchanged.NO_HTML
    assert plan(FIXTURES["malformed"]).unchanged is Unchanged.MALFORMED
    assert plan(FIXTURES["charset"]).unchanged is Unchanged.CHARSET
    done = plan(FIXTURES["qp-latin1"]).apply(*urls("a@d.test", True))
    assert done.unchanged is None and done.pixel and len(done.links) == 3
