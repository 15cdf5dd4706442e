"""DKIM signatures: our canonicalisation shortcuts equal dkimpy's, the header list oversigns,
and OpenDKIM and dkimpy verify what we sign (RSA and Ed25519)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import dkim
import pytest
from dkim.canonicalization import Relaxed
from support.opendkim import dkimpy_results, opendkim_results

from mailsluice.dkim.keys import SigningKey, generate
from mailsluice.dkim.sign import (
    SigningError,
    header_list,
    relaxed_body,
    signature_fields,
    split_message,
)

RSA = generate("example.com", "r1", "rsa")
ED = generate("example.com", "e1", "ed25519")
MESSAGE = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: Hello\r\n"
    b"Date: Thu, 03 Dec 2026 12:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"List-Unsubscribe: <https://u.example.com/u/T>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
    b"Hello  Bob,\t\r\n\r\nsee you.\r\n\r\n"
)


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def test_relaxed_body_equals_dkimpys() -> None:
    rng = random.Random(14)
    for _ in range(20000):
        body = _crlf(bytes(rng.choice(b" \t\r\nab\x0b") for _ in range(rng.randint(0, 40))))
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), body


def test_split_message_equals_dkimpys_parse() -> None:
    rng = random.Random(8463)
    parts = [b"From: a\r\n", b"To: b\r\n", b" folded\r\n", b"\r\n", b"body\r\n", b"x", b"\r\n"]
    for _ in range(5000):
        message = b"".join(rng.choice(parts) for _ in range(rng.randint(0, 8)))
        try:
            expected = dkim.rfc822_parse(message)
        except (dkim.MessageFormatError, IndexError):
            with pytest.raises(SigningError):
                split_message(message)
            continue
        assert split_message(message) == (expected[0], expected[1]), message


def test_from_subject_to_are_oversigned_and_absent_fields_are_not_listed() -> None:
    headers, _ = split_message(MESSAGE)
    names = header_list(headers)
    assert names.count(b"from") == 2 and names.count(b"to") == 2
    assert names.count(b"subject") == 2
    assert names.count(b"list-unsubscribe") == 1 and names.count(b"list-unsubscribe-post") == 1
    assert b"cc" not in names and b"date" in names and b"message-id" in names


@pytest.mark.parametrize("keys", [[RSA], [ED], [RSA, ED]], ids=["rsa", "ed25519", "both"])
def test_opendkim_and_dkimpy_verify_our_signatures(
    keys: list[SigningKey], tmp_path: Path, dns_zone: object, dns_nameserver: str
) -> None:
    for key in keys:
        dns_zone.set_txt(key.record_name, [key.dns_record()])  # type: ignore[attr-defined]
    signed = signature_fields(MESSAGE, keys, 1_796_000_000) + MESSAGE
    assert signed.count(b"DKIM-Signature:") == len(keys)
    expected = {k.selector: "pass" for k in keys}
    assert opendkim_results(signed, keys, tmp_path / "ok") == expected
    assert dkimpy_results(signed, dns_nameserver) == {k.selector: True for k in keys}
    # Each verifier can fail: an added From (oversigned) and a changed body break every one.
    tampered = b"From: mallory@evil.test\r\n" + signed
    assert set(opendkim_results(tampered, keys, tmp_path / "from").values()) == {"fail"}
    changed = signed.replace(b"see you.", b"see you!")
    assert set(dkimpy_results(changed, dns_nameserver).values()) == {False}
