"""Standard Webhooks signatures: the published test vector, rotation (every secret signs, a
receiver holding either verifies), and what a receiver refuses."""

from __future__ import annotations

import base64

import pytest

from mailsluice.tenancy.model import webhook_secret_bytes
from mailsluice.webhooks.signing import (
    SIGNATURE_HEADER,
    VerificationError,
    sign_headers,
    signature,
    verify,
)

# The test vector of the Standard Webhooks reference libraries.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()


def test_the_published_test_vector_reproduces_exactly() -> None:
    sig = signature(webhook_secret_bytes(VECTOR_SECRET), VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    assert sig == VECTOR_SIG
    headers = sign_headers([VECTOR_SECRET], VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TS),
        "webhook-signature": VECTOR_SIG,
    }
    verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TS + 10)


def test_every_secret_signs_so_either_side_of_a_rotation_verifies() -> None:
    headers = sign_headers([NEW, OLD], "msg_a", 1000, b"{}")
    assert len(headers[SIGNATURE_HEADER].split(" ")) == 2
    verify(OLD, headers, b"{}", now=1000)
    verify(NEW, headers, b"{}", now=1000)
    with pytest.raises(VerificationError, match="no matching"):
        verify(VECTOR_SECRET, headers, b"{}", now=1000)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"body": b'{"x":1}'}, "no matching"),
        ({"now": 1000 + 301}, "tolerance"),
        ({"now": 1000 - 301}, "tolerance"),
        ({"id": "msg_b"}, "no matching"),
        ({"drop": "webhook-timestamp"}, "malformed"),
    ],
)
def test_a_receiver_refuses_what_was_not_signed_so(change: dict[str, object], why: str) -> None:
    headers = sign_headers([OLD], "msg_a", 1000, b"{}")
    if "id" in change:
        headers["webhook-id"] = str(change["id"])
    if "drop" in change:
        del headers[str(change["drop"])]
    body = change.get("body", b"{}")
    now = change.get("now", 1000)
    assert isinstance(body, bytes) and isinstance(now, int)
    with pytest.raises(VerificationError, match=why):
        verify(OLD, headers, body, now=now)


def test_header_names_compare_without_case() -> None:
    headers = {k.title(): v for k, v in sign_headers([OLD], "msg_a", 1000, b"{}").items()}
    verify(OLD, headers, b"{}", now=1000)


def test_an_id_with_a_dot_is_refused_since_dots_delimit_the_signed_content() -> None:
    with pytest.raises(ValueError, match="dots"):
        sign_headers([OLD], "msg.a", 1000, b"{}")
