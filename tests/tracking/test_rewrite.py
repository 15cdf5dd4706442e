"""Rewriting a message's HTML parts for tracking: links, pixel, and the MIME tree kept intact."""

from __future__ import annotations

import email
import re
from email.message import EmailMessage
from email.policy import SMTP, default

import pytest

from mailsluice.tracking import Unchanged, rewrite
from mailsluice.tracking.mime import leaves

CLICK = "https://t.test/c/{index}?k=1&s=2"
OPEN = "https://t.test/o/tok?k=1&s=2"
PIXEL = (
    b'<img src="https://t.test/o/tok?k=1&amp;s=2" width="1" height="1" alt="" style="display:none">'
)
UNSUBSCRIBE = "https://u.test/u/"


def click(index: int, target: str) -> str:
    return CLICK.format(index=index)


def opened() -> str:
    return OPEN


def keep(target: str) -> bool:
    return target.startswith(UNSUBSCRIBE)


def message(*lines: str | bytes) -> bytes:
    return b"\r\n".join(line.encode() if isinstance(line, str) else line for line in lines)


def tracked(href: int) -> bytes:
    return f'"https://t.test/c/{href}?k=1&amp;s=2"'.encode()


def structure(data: bytes) -> list[tuple[str, str | None]]:
    parsed = email.message_from_bytes(data, policy=default)
    assert not parsed.defects
    return [(part.get_content_type(), part.get_boundary()) for part in parsed.walk()]


def html_of(data: bytes) -> str:
    parsed = email.message_from_bytes(data, policy=default)
    assert isinstance(parsed, EmailMessage)
    body = parsed.get_body(("html",))
    assert body is not None
    return str(body.get_content())


def assert_only_html_changed(before: bytes, after: bytes) -> None:
    """Same tree, and every part but the HTML ones byte for byte the same."""
    assert structure(after) == structure(before)
    old, new = leaves(before), leaves(after)
    assert len(old) == len(new)
    for a, b in zip(old, new, strict=True):
        if a.content_type != "text/html":
            assert after[b.header_start : b.body_end] == before[a.header_start : a.body_end]
    assert after[: new[0].header_start] == before[: old[0].header_start]
    assert after[new[-1].body_end :] == before[old[-1].body_end :]


HTML = (
    '<html><body><p>Hi</p><a href="https://shop.test/a">A</a>'
    "<a class=x href='http://shop.test/b'>B</a></body></html>"
)
ALTERNATIVE = message(
    "From: a@s.test",
    "MIME-Version: 1.0",
    'Content-Type: multipart/alternative; boundary="alt"',
    "",
    "preamble",
    "--alt",
    "Content-Type: text/plain; charset=us-ascii",
    "",
    "Hi https://shop.test/a",
    "--alt",
    "Content-Type: text/html; charset=us-ascii",
    "",
    HTML,
    "--alt--",
    "epilogue",
    "",
)


def test_multipart_alternative_rewrites_the_html_and_leaves_the_text() -> None:
    done = rewrite(ALTERNATIVE, click, opened, keep)
    assert done.unchanged is None and done.pixel
    assert done.links == ("https://shop.test/a", "http://shop.test/b")
    assert_only_html_changed(ALTERNATIVE, done.message)
    assert b"<a href=" + tracked(0) + b">A</a><a class=x href=" + tracked(1) + b">B" in (
        done.message
    )
    assert PIXEL + b"</body></html>\r\n--alt--" in done.message
    assert b"Hi https://shop.test/a\r\n--alt" in done.message


def test_links_are_numbered_across_every_html_part_and_the_tokenizer_finds_them() -> None:
    html = (
        '<A HREF = "https://x.test/1" >1</A><!-- <a href="https://x.test/no"> -->'
        '<script>var s = "<a href=\\"https://x.test/no\\">";</script>'
        "<a href=https://x.test/2 title='href=\"https://x.test/no\"'>2</a>"
        '<a title="href=https://x.test/no" href="https://x.test/3">3</a></BODY>'
    )
    data = message(
        'Content-Type: multipart/mixed; boundary="m"',
        "",
        "--m",
        "Content-Type: text/html",
        "",
        html,
        "--m",
        "Content-Type: text/html",
        "",
        '<a href="https://x.test/4">4</a>',
        "--m--",
        "",
    )
    done = rewrite(data, click, opened)
    assert done.links == tuple(f"https://x.test/{n}" for n in (1, 2, 3, 4))
    assert b'<A HREF = "https://t.test/c/0?k=1&amp;s=2" >' in done.message
    assert b"<a href=" + tracked(1) + b" title='href=\"https://x.test/no\"'>" in done.message
    assert b'<a title="href=https://x.test/no" href=' + tracked(2) + b">" in done.message
    assert done.message.count(b"https://x.test/no") == 4
    assert PIXEL + b"</BODY>" in done.message
    assert done.message.count(PIXEL) == 2


def test_links_on_later_lines_are_found_at_their_offsets() -> None:
    html = '<body>\r\n<p>caf\u00e9</p>\r\n  <a\r\n href="https://s.test/1">1</a> <a href="https://s.test/2">'
    data = message(
        "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        html.encode(),
        "</body>",
    )
    done = rewrite(data, click, opened)
    expected = html.replace('"https://s.test/1"', tracked(0).decode())
    expected = expected.replace('"https://s.test/2"', tracked(1).decode())
    assert done.message.endswith(expected.encode() + b"\r\n" + PIXEL + b"</body>")


def test_mailto_tel_anchor_relative_notrack_and_unsubscribe_links_are_kept() -> None:
    kept = [
        '<a href="mailto:help@s.test">m</a>',
        '<a href="tel:+441234">t</a>',
        '<a href="#top">a</a>',
        '<a href="/relative">r</a>',
        '<a href="javascript:void(0)">j</a>',
        '<a data-ms-notrack href="https://shop.test/private">n</a>',
        '<a href="https://u.test/u/TOKEN">u</a>',
        "<a name=x>no href</a>",
    ]
    html = "<body>" + "".join(kept) + '<a href="https://shop.test/ok">ok</a></body>'
    data = message("Content-Type: text/html; charset=utf-8", "", html, "")
    done = rewrite(data, click, opened, keep)
    assert done.links == ("https://shop.test/ok",)
    for link in kept:
        assert link.encode() in done.message


def test_an_entity_encoded_href_is_decoded_for_the_target_and_the_new_url_is_escaped() -> None:
    html = '<body><a href="https://shop.test/?a=1&amp;b=2&#38;c=&quot;">x</a></body>'
    done = rewrite(message("Content-Type: text/html", "", html, ""), click, opened)
    assert done.links == ('https://shop.test/?a=1&b=2&c="',)
    assert b"<a href=" + tracked(0) + b">x</a>" in done.message


def test_whitespace_around_a_target_is_not_part_of_it() -> None:
    html = '<a href="  https://shop.test/a\n">x</a>'
    done = rewrite(message("Content-Type: text/html", "", html), click, opened)
    assert done.links == ("https://shop.test/a",)


def test_without_a_body_tag_the_pixel_is_appended_before_the_trailing_line_break() -> None:
    data = message("Content-Type: text/html", "", '<p><a href="https://s.test/">x</a></p>', "")
    done = rewrite(data, click, opened)
    assert done.message.endswith(b"</a></p>" + PIXEL + b"\r\n")


def test_a_link_after_the_body_end_tag_is_tracked_and_the_pixel_stays_before_it() -> None:
    html = '<html><body><p>x</p></body><a href="https://s.test/">y</a></html>'
    done = rewrite(message("Content-Type: text/html", "", html, ""), click, opened)
    assert done.links == ("https://s.test/",)
    end = b"<p>x</p>" + PIXEL + b"</body><a href=" + tracked(0) + b">y</a></html>\r\n"
    assert done.message.endswith(end)


def test_multipart_related_keeps_the_inline_image_and_its_cid_reference() -> None:
    image = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk\r\n"
        "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    )
    data = message(
        "MIME-Version: 1.0",
        'Content-Type: multipart/related; boundary="rel"; type="text/html"',
        "",
        "--rel",
        "Content-Type: text/html; charset=utf-8",
        "",
        '<body><img src="cid:logo@s.test"><a href="cid:logo@s.test">l</a></body>',
        "--rel",
        "Content-Type: image/png",
        "Content-ID: <logo@s.test>",
        "Content-Disposition: inline",
        "Content-Transfer-Encoding: base64",
        "",
        image,
        "--rel--",
        "",
    )
    done = rewrite(data, click, opened)
    assert done.links == ()
    assert done.pixel
    assert b'<img src="cid:logo@s.test"><a href="cid:logo@s.test">' in done.message
    assert_only_html_changed(data, done.message)


def test_nested_mixed_related_alternative_with_a_base64_and_an_html_attachment() -> None:
    attachment = "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K\r\nZW5kc3RyZWFt"
    html_attachment = '<a href="https://attached.test/">kept</a>'
    data = message(
        'Content-Type: multipart/mixed; boundary="mix"',
        "",
        "--mix",
        'Content-Type: multipart/related; boundary="rel"',
        "",
        "--rel",
        'Content-Type: multipart/alternative; boundary="alt"',
        "",
        "--alt",
        "Content-Type: text/plain",
        "",
        "text https://shop.test/a",
        "--alt",
        "Content-Type: text/html",
        "",
        '<body><a href="https://shop.test/a">a</a></body>',
        "--alt--",
        "--rel",
        "Content-Type: image/gif",
        "Content-Transfer-Encoding: base64",
        "",
        "R0lGODlhAQABAAAAACw=",
        "--rel--",
        "--mix",
        'Content-Type: application/pdf; name="a.pdf"',
        'Content-Disposition: attachment; filename="a.pdf"',
        "Content-Transfer-Encoding: base64",
        "",
        attachment,
        "--mix",
        "Content-Type: text/html",
        "Content-Disposition: attachment; filename=page.html",
        "",
        html_attachment,
        "--mix--",
        "",
    )
    done = rewrite(data, click, opened)
    assert done.links == ("https://shop.test/a",)
    assert_only_html_changed(data, done.message)
    assert attachment.encode() + b"\r\n--mix\r\n" in done.message
    assert done.message.count(PIXEL) == 1
    assert html_attachment.encode() + b"\r\n--mix--" in done.message


@pytest.mark.parametrize(
    "data",
    [
        message('Content-Type: multipart/alternative; boundary="b"', "", "--b", "", "x", ""),
        message("Content-Type: multipart/alternative", "", "--b", "", "x", "--b--", ""),
        message("Content-Type: text/html", "<a href='https://s.test/'>x</a>"),
        b"\r\n<a href='https://s.test/'>x</a>",
    ],
    ids=["no-closing-boundary", "no-boundary-parameter", "no-blank-line", "no-header"],
)
def test_a_malformed_message_is_returned_unchanged(data: bytes) -> None:
    done = rewrite(data, click, opened)
    assert done.message is data
    assert done.unchanged is Unchanged.MALFORMED
    assert not done.pixel and done.links == ()


def test_a_message_without_html_is_returned_unchanged() -> None:
    data = message("Content-Type: text/plain", "", "https://s.test/", "")
    assert rewrite(data, click, opened).unchanged is Unchanged.NO_HTML


def test_the_rewritten_message_parses_to_the_html_with_the_new_links() -> None:
    html = html_of(rewrite(ALTERNATIVE, click, opened).message)
    hrefs = re.findall(r'href="([^"]+)"', html)
    assert hrefs == ["https://t.test/c/0?k=1&amp;s=2", "https://t.test/c/1?k=1&amp;s=2"]
    assert "href='http" not in html


# Transfer encodings and charsets.

NON_ASCII = "Caf\u00e9 cr\u00e8me \u00e0 5 \u20ac \u2014 \u201cquoted\u201d"


def single(html: bytes, charset: str, encoding: str | None) -> bytes:
    field = [f"Content-Transfer-Encoding: {encoding}"] if encoding else []
    return message(
        "MIME-Version: 1.0", f'Content-Type: text/html; charset="{charset}"', *field, "", html, ""
    )


def body_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[1].split(b"\r\n")


def test_quoted_printable_html_with_soft_breaks_stays_quoted_printable() -> None:
    encoded = (
        b'<html><body><p style=3D"color:red">Caf=E9</p><a href=3D"https://shop.test/=\r\n'
        b'a?x=3D1&amp;y=3D2">a</a>' + b"x" * 60 + b"=\r\n" + b"y" * 70 + b"</body></html>"
    )
    data = single(encoded, "iso-8859-1", "quoted-printable")
    done = rewrite(data, click, opened)
    assert done.links == ("https://shop.test/a?x=1&y=2",)
    assert b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" in done.message
    assert all(len(line) <= 76 for line in body_lines(done.message))
    html = html_of(done.message)
    assert '<p style="color:red">Caf\u00e9</p>' in html
    assert '<a href="https://t.test/c/0?k=1&amp;s=2">a</a>' + "x" * 60 + "y" * 70 in html
    assert html.endswith(PIXEL.decode() + "</body></html>\r\n")


def test_base64_html_stays_base64_in_76_character_lines() -> None:
    import base64

    html = "<html><body>" + NON_ASCII + '<a href="https://shop.test/a">a</a>' * 5 + "</body>"
    encoded = base64.encodebytes(html.encode("utf-8")).replace(b"\n", b"\r\n").rstrip()
    data = single(encoded, "utf-8", "base64")
    done = rewrite(data, click, opened)
    assert len(done.links) == 5
    lines = body_lines(done.message)
    assert all(len(line) == 76 for line in lines[:-3]) and lines[-1] == b""
    assert html_of(done.message).startswith("<html><body>" + NON_ASCII + "<a href=")
    assert done.message.endswith(b"\r\n")


@pytest.mark.parametrize("charset", ["iso-8859-1", "windows-1252", "utf-8"])
@pytest.mark.parametrize("encoding", ["8bit", "quoted-printable", "base64"])
def test_non_ascii_text_round_trips_in_its_charset(charset: str, encoding: str) -> None:
    text = NON_ASCII if charset != "iso-8859-1" else "Caf\u00e9 cr\u00e8me \u00e0 5 \u00a3"
    html = f'<body><p>{text}</p><a href="https://shop.test/\u00e9">x</a></body>'
    raw = html.encode(charset)
    part = email.message.EmailMessage()
    part.set_content(raw, "text", "html", cte=encoding, params={"charset": charset})
    data = part.as_bytes(policy=SMTP)
    done = rewrite(data, click, opened)
    assert done.unchanged is None
    assert done.links == ("https://shop.test/\u00e9",)
    parsed = email.message_from_bytes(done.message, policy=default)
    assert parsed["Content-Transfer-Encoding"] == encoding
    assert parsed.get_content_charset() == charset
    payload = parsed.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert payload.decode(charset) == html.replace(
        '"https://shop.test/\u00e9"', '"https://t.test/c/0?k=1&amp;s=2"'
    ).replace("</body>", PIXEL.decode() + "</body>")


def test_a_7bit_part_whose_new_line_would_be_too_long_becomes_quoted_printable() -> None:
    line = "<body>" + '<a href="https://shop.test/a">a</a>' * 25 + "</body>"
    assert len(line) < 998
    data = message(
        'Content-Type: multipart/alternative; boundary="b"',
        "",
        "--b",
        "Content-Type: text/html",
        "Content-Transfer-Encoding: 7bit",
        " (folded comment)",
        "X-After: kept",
        "",
        line,
        "--b--",
        "",
    )
    done = rewrite(data, click, opened)
    assert b"Content-Transfer-Encoding: quoted-printable\r\nX-After: kept\r\n\r\n" in done.message
    assert all(len(line) <= 76 for line in done.message.split(b"\r\n"))
    assert html_of(done.message).count("https://t.test/c/") == 25
    assert_only_html_changed(data, done.message)


def test_a_part_without_a_transfer_encoding_field_gets_one_when_it_must_change() -> None:
    data = message("Content-Type: text/html", "", "<body>" + "x" * 900 + "</body>", "")
    done = rewrite(data, click, opened)
    assert done.message.startswith(
        b"Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    assert html_of(done.message) == "<body>" + "x" * 900 + PIXEL.decode() + "</body>\r\n"


def test_a_short_7bit_part_stays_7bit_byte_for_byte_around_the_edits() -> None:
    data = message("Content-Type: text/html", "Content-Transfer-Encoding: 7bit", "", HTML, "")
    done = rewrite(data, click, opened)
    assert done.message.startswith(
        b"Content-Type: text/html\r\nContent-Transfer-Encoding: 7bit\r\n"
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (single(b"<body>caf\xe9</body>", "utf-8", "8bit"), Unchanged.CHARSET),
        (single(b"<body>\x81</body>", "windows-1252", "8bit"), Unchanged.CHARSET),
        (single(b"<body>x</body>", "x-no-such-charset", None), Unchanged.CHARSET),
        (single(b"<body>caf\xe9</body>", "us-ascii", "8bit"), Unchanged.CHARSET),
        (single(b"PGJvZHk+=a", "utf-8", "base64"), Unchanged.TRANSFER_ENCODING),
        (single(b"begin 644 x", "utf-8", "x-uuencode"), Unchanged.TRANSFER_ENCODING),
    ],
    ids=[
        "bad-utf-8",
        "cp1252-undefined-byte",
        "unknown",
        "8bit-as-ascii",
        "bad-base64",
        "uuencode",
    ],
)
def test_an_html_part_that_cannot_be_decoded_leaves_the_message_unchanged(
    data: bytes, reason: Unchanged
) -> None:
    done = rewrite(data, click, opened)
    assert done.message is data
    assert done.unchanged is reason


def test_one_undecodable_html_part_leaves_the_whole_message_unchanged() -> None:
    data = message(
        'Content-Type: multipart/mixed; boundary="m"',
        "",
        "--m",
        "Content-Type: text/html; charset=utf-8",
        "",
        '<a href="https://s.test/">ok</a>',
        "--m",
        "Content-Type: text/html; charset=utf-8",
        "",
        b"caf\xe9",
        "--m--",
        "",
    )
    done = rewrite(data, click, opened)
    assert done.message is data and done.links == () and not done.pixel


def test_without_an_open_url_links_are_redirected_and_no_pixel_is_added() -> None:
    done = rewrite(ALTERNATIVE, click, None, keep)
    assert done.unchanged is None and not done.pixel
    assert done.links == ("https://shop.test/a", "http://shop.test/b")
    assert b"<img" not in done.message and tracked(1) in done.message
    assert_only_html_changed(ALTERNATIVE, done.message)
