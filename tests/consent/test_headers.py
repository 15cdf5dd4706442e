"""The List-Unsubscribe header fields (RFC 2369, RFC 8058)."""

from __future__ import annotations

import email
from email.policy import default

from mailsluice.consent import headers

TOKEN = "abcdefgh234567"


def test_fields_name_the_link_and_the_mailto_address_and_one_click() -> None:
    message = headers.with_fields(b"Subject: hi\r\n\r\nbody\r\n", "https://u.test", "u.test", TOKEN)
    parsed = email.message_from_bytes(message, policy=default)
    assert parsed["List-Unsubscribe"] == (
        f"<https://u.test/u/{TOKEN}>, <mailto:unsubscribe+{TOKEN}@u.test>"
    )
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Subject"] == "hi"
    assert message.endswith(b"\r\n\r\nbody\r\n")
    assert all(len(line) < 998 for line in message.split(b"\r\n"))


def test_no_mailto_without_a_domain_or_when_the_address_would_be_too_long() -> None:
    assert b"mailto" not in headers.fields("https://u.test", "", TOKEN)
    assert b"mailto" not in headers.fields("https://u.test", "u.test", "a" * 250)


def test_an_existing_list_unsubscribe_field_is_found_in_the_header_only() -> None:
    assert headers.has_list_unsubscribe(b"Subject: x\r\nlist-unsubscribe : <x>\r\n\r\nb\r\n")
    assert headers.has_list_unsubscribe(b"List-Unsubscribe: <x>\n\nb\n")
    assert not headers.has_list_unsubscribe(b"Subject: x\r\n\r\nList-Unsubscribe: <x>\r\n")
    assert not headers.has_list_unsubscribe(b"X-List-Unsubscribe: <x>\r\n\r\n")
