"""API keys: made once, stored as a digest, matched in constant time."""

from __future__ import annotations

import pytest

from mailsluice.tenancy.keys import DIGEST, digest_of, key_id_of, matches, new_key


def test_a_new_key_matches_its_digest_and_nothing_else() -> None:
    key, digest = new_key("k2026a")
    assert key.startswith("ms_k2026a_") and DIGEST.match(digest)
    assert matches(key, digest)
    assert matches(f"  {key}\n", digest)  # pasted with blanks around
    other, _ = new_key("k2026a")
    assert other != key and not matches(other, digest)


def test_a_tampered_key_fails() -> None:
    key, digest = new_key()
    last = key[-1]
    tampered = key[:-1] + ("A" if last != "A" else "B")
    assert not matches(tampered, digest)
    assert not matches(key[:-1], digest)
    assert not matches(key.replace("ms_", "ms-", 1), digest)


def test_key_id_of() -> None:
    key, _ = new_key("k2026a")
    assert key_id_of(key) == "k2026a"
    assert key_id_of(new_key()[0]) is not None
    for junk in ("", "ms_k2026a", "Bearer " + key, key + "x", key.upper(), "ms__" + "a" * 43):
        assert key_id_of(junk) is None, junk


@pytest.mark.parametrize("kid", ["short", "UPPER1", "a" * 33, "with_underscore"])
def test_bad_key_ids_are_refused(kid: str) -> None:
    with pytest.raises(ValueError, match="key id"):
        new_key(kid)


def test_the_digest_is_of_the_whole_key() -> None:
    key, digest = new_key("k2026a")
    assert digest == digest_of(key) and digest != digest_of(key[:-1])
