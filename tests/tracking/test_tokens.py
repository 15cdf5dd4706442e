"""Tracking tokens: sealed, URL-safe, and the redirect target is only what was sealed."""

from __future__ import annotations

import base64

import pytest

from mailsluice.sealing import TokenError
from mailsluice.tracking.tokens import CLICK_PATH, OPEN_PATH, Mark, TrackingKeys

KEYS = TrackingKeys({"t1": b"0123456789abcdef0123"})
MARK = Mark(
    kind="open",
    queue_id="01JQ0000000000000000000000",
    recipient="Ann.Lee@example.org",
    sent=1_790_000_000,
    pool="default",
    routing_key="google",
    tenant="acme",
    campaign="spring",
)


def test_an_open_and_a_click_come_back_as_minted() -> None:
    assert KEYS.verify(KEYS.mint(MARK)) == MARK
    click = MARK.click(3, "https://shop.example/a?b=1&c=%20")
    back = KEYS.verify(KEYS.mint(click))
    assert (back.kind, back.link, back.target) == ("click", 3, "https://shop.example/a?b=1&c=%20")
    assert back == click


def test_urls_carry_the_token_in_the_path_and_nothing_readable() -> None:
    url = KEYS.click_url("https://t.example", MARK, 0, "https://shop.example/")
    assert url.startswith("https://t.example" + CLICK_PATH)
    assert KEYS.open_url("https://t.example", MARK).startswith("https://t.example" + OPEN_PATH)
    token = url.rsplit("/", 1)[1]
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert "example.org" not in url and "Ann" not in url and "shop" not in token


def test_a_changed_target_or_a_stranger_s_key_does_not_verify() -> None:
    token = KEYS.mint(MARK.click(0, "https://shop.example/"))
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[-1] ^= 1
    forged = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(TokenError) as caught:
        KEYS.verify(forged)
    assert caught.value.reason == "forged"
    other = TrackingKeys({"t1": b"another secret of 20b"})
    with pytest.raises(TokenError):
        other.verify(token)
    with pytest.raises(TokenError) as unknown:
        TrackingKeys({"t2": b"0123456789abcdef0123"}).verify(token)
    assert unknown.value.reason == "unknown_key"
    for junk in ("", "short", "!" * 40, "A" * 41):
        with pytest.raises(TokenError):
            KEYS.verify(junk)


def test_an_unsubscribe_key_never_makes_a_tracking_token() -> None:
    # the same secret under another purpose derives other cipher keys
    from mailsluice.consent.tokens import Claim, KeyRing

    secret = {"t1": b"0123456789abcdef0123"}
    unsub = KeyRing(secret).mint(Claim("ann@example.org"))
    raw = base64.b32decode(unsub.upper() + "=" * (-len(unsub) % 8))
    as_url = base64.urlsafe_b64encode(b"\x01" + raw[1:]).decode().rstrip("=")
    with pytest.raises(TokenError):
        KEYS.verify(as_url)


def test_rotation_mints_with_the_active_key_and_verifies_with_both() -> None:
    old = KEYS.mint(MARK)
    both = TrackingKeys({"t1": b"0123456789abcdef0123", "t2": b"fedcba9876543210fedc"}, "t2")
    new = both.mint(MARK)
    assert both.verify(old) == both.verify(new) == MARK
    with pytest.raises(TokenError):
        KEYS.verify(new)
