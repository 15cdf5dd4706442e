"""Unsubscribe tokens: a claim comes back only from a token we signed, under a key we hold."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.consent.tokens import (
    Claim,
    KeyRing,
    TokenError,
    claim_for,
    mailto_token,
    unsubscribe_event,
)
from mailsluice.contracts.events import EventType
from mailsluice.contracts.suppressions import Scope, ScopeKind

OLD, NEW = b"o" * 32, b"n" * 32
CLAIM = Claim("Ann.Lee@example.org", "list:acme/news", "acme", "news", "")


def raw(token: str) -> bytes:
    return base64.b32decode(token.upper() + "=" * (-len(token) % 8))


def test_a_token_gives_its_claim_back_and_is_url_and_local_part_safe() -> None:
    keys = KeyRing({"k1": OLD})
    token = keys.mint(CLAIM)
    assert re.fullmatch(r"[a-z2-7]+", token)
    assert keys.verify(token) == CLAIM
    # a mail system may hand the address back in another case
    assert keys.verify(token.upper()) == CLAIM


def test_every_changed_character_is_refused() -> None:
    keys = KeyRing({"k1": OLD})
    token = keys.mint(CLAIM)
    refused = 0
    for i in range(len(token)):
        other = "a" if token[i] != "a" else "b"
        with pytest.raises(TokenError):
            keys.verify(token[:i] + other + token[i + 1 :])
        refused += 1
    assert refused == len(token)


def test_a_token_shows_nothing_of_its_claim() -> None:
    opened = raw(KeyRing({"k1": OLD}).mint(CLAIM))
    for field in (b"ann.lee", b"Ann.Lee", b"example.org", b"acme", b"news"):
        assert field not in opened


def test_a_token_altered_and_re_encoded_is_forged() -> None:
    keys = KeyRing({"k1": OLD})
    token = raw(keys.mint(CLAIM))
    for i in range(4, len(token)):  # every byte after the key id
        altered = token[:i] + bytes([token[i] ^ 1]) + token[i + 1 :]
        with pytest.raises(TokenError) as err:
            keys.verify(base64.b32encode(altered).decode().rstrip("=").lower())
        assert err.value.reason == "forged"


def test_a_token_signed_with_another_secret_under_our_key_id_is_forged() -> None:
    theirs = KeyRing({"k1": b"x" * 32}).mint(CLAIM)
    with pytest.raises(TokenError) as err:
        KeyRing({"k1": OLD}).verify(theirs)
    assert err.value.reason == "forged"


@pytest.mark.parametrize("token", ["", "abc", "not-a-token!", "a" * 700, "0189" * 10, "ab" * 20])
def test_garbage_is_malformed(token: str) -> None:
    with pytest.raises(TokenError) as err:
        KeyRing({"k1": OLD}).verify(token)
    assert err.value.reason == "malformed"


def test_rotation_new_key_mints_old_still_verifies_until_retired() -> None:
    before = KeyRing({"k1": OLD}).mint(CLAIM)
    rotating = KeyRing({"k1": OLD, "k2": NEW}, "k2")
    after = rotating.mint(CLAIM)
    assert rotating.verify(before) == rotating.verify(after) == CLAIM
    assert KeyRing({"k2": NEW}).verify(after) == CLAIM  # minted with k2
    with pytest.raises(TokenError) as err:
        KeyRing({"k2": NEW}).verify(before)  # k1 retired
    assert err.value.reason == "unknown_key"


def test_tokens_of_different_recipients_share_nothing_guessable() -> None:
    keys = KeyRing({"k1": OLD})
    a = keys.mint(Claim("a1@example.org", "global"))
    b = keys.mint(Claim("a2@example.org", "global"))
    assert a != b and keys.verify(a).recipient == "a1@example.org"
    # the synthetic IV (after "k1" and its end) differs for neighbouring claims
    assert raw(a)[4:20] != raw(b)[4:20]


def test_key_ring_checks_its_keys() -> None:
    with pytest.raises(ValueError, match="shorter"):
        KeyRing({"k1": b"short"})
    with pytest.raises(ValueError, match="key id"):
        KeyRing({"K 1": OLD})
    with pytest.raises(ValueError, match="active"):
        KeyRing({"k1": OLD, "k2": NEW})  # two keys, none named active
    assert not KeyRing({})


@pytest.mark.parametrize(
    ("preference", "tenant", "list_id", "sender", "label"),
    [
        ("list", "acme", "news", "n@Acme.example", "list:acme/news"),
        ("list", "acme", "", "n@acme.example", "tenant:acme"),
        ("list", "", "news", "n@acme.example", "domain:acme.example"),
        ("list", "", "", "", "global"),
        ("tenant", "acme", "news", "n@acme.example", "tenant:acme"),
        ("domain", "acme", "news", "n@acme.example", "domain:acme.example"),
        ("global", "acme", "news", "n@acme.example", "global"),
    ],
)
def test_the_scope_is_the_narrowest_the_preference_allows(
    preference: str, tenant: str, list_id: str, sender: str, label: str
) -> None:
    claim = claim_for(
        "r@x.example",
        tenant=tenant,
        list_id=list_id,
        sender=sender,
        preference=preference,  # type: ignore[arg-type]
    )
    assert claim.scope == label
    assert Scope.parse(claim.scope).label == label
    # the sender domain is named only when there is no tenant
    assert claim.domain == ("" if tenant else sender.rpartition("@")[2].lower())


def test_the_event_of_a_claim() -> None:
    event = unsubscribe_event(CLAIM, "mailto", 5.0)
    assert (event.type, event.recipient, event.scope, event.reason, event.ts) == (
        EventType.UNSUBSCRIBE,
        CLAIM.recipient,
        "list:acme/news",
        "mailto",
        5.0,
    )
    assert Scope.parse(event.scope).kind is ScopeKind.LIST


def test_mailto_token_only_for_our_domain_and_prefix() -> None:
    assert mailto_token("unsubscribe+abc@U.example", "u.example") == "abc"
    assert mailto_token("Unsubscribe+abc@u.example", "u.example") == "abc"
    assert mailto_token("unsubscribe+abc@other.example", "u.example") is None
    assert mailto_token("abc@u.example", "u.example") is None
    assert mailto_token("unsubscribe+abc@u.example", "") is None


def test_keys_from_a_secret_mount_and_inline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "k1").write_bytes(OLD + b"\n")
    (tmp_path / "..data").mkdir()  # a Secret mount's own entries
    (tmp_path / "..2026_12_03").write_text("x")
    settings = UnsubscribeSettings(
        keys_dir=str(tmp_path), keys="k2:" + NEW.decode(), active_key="k2"
    )
    keys = settings.key_ring()
    assert keys.active == "k2"
    assert keys.verify(KeyRing({"k1": OLD}).mint(CLAIM)) == CLAIM


def test_the_link_must_be_https() -> None:
    with pytest.raises(ValueError, match="https"):
        UnsubscribeSettings(url="http://u.example")
    assert UnsubscribeSettings(url="https://u.example/").url == "https://u.example"


def test_a_claim_with_a_campaign_comes_back_and_its_event_names_it() -> None:
    # campaign stats count unsubscribes by the campaign the token carries
    keys = KeyRing({"k1": OLD})
    claim = claim_for(
        "ann@example.org",
        tenant="acme",
        list_id="news",
        sender="news@acme.test",
        preference="list",
        campaign="spring-sale",
    )
    back = keys.verify(keys.mint(claim))
    assert (back, back.campaign) == (claim, "spring-sale")
    event = unsubscribe_event(back, "one-click", 1.0)
    assert (event.tenant, event.campaign) == ("acme", "spring-sale")


def test_a_token_without_campaign_is_the_layout_tokens_had_before_campaigns() -> None:
    # links in mail already delivered keep working: no campaign, no sixth field
    keys = KeyRing({"k1": OLD})
    head = b"\x02k1\x00"
    # derived as tokens in delivered mail were: the purpose label, NUL, the secret
    cipher = AESSIV(hashlib.sha512(b"mailsluice unsubscribe token\x00" + OLD).digest())
    sealed = cipher.encrypt(
        "\x1f".join(("Ann.Lee@example.org", "acme", "news", "", "list:acme/news")).encode(),
        [head],
    )
    before = base64.b32encode(head + sealed).decode().rstrip("=").lower()
    assert keys.mint(CLAIM) == before
    assert keys.verify(before) == CLAIM
