"""Routing keys: a provider's shard is named "provider#n"; anything else is the key itself."""

from __future__ import annotations

from mailsluice.contracts.routing import base_of, shard_key, split_key


def test_split_key() -> None:
    assert split_key("google#3") == ("google", 3)
    assert split_key("example.com") == ("example.com", None)
    assert split_key("odd#name") == ("odd#name", None)
    assert base_of("google#12") == "google" and base_of("odd#name") == "odd#name"
    assert split_key(shard_key("yahoo", 7)) == ("yahoo", 7)
