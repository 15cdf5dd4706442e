"""API keys: `ms_<key id>_<secret>`, shown once when made and stored only as a SHA-256 digest.

The secret is 32 random bytes, so a plain digest is as strong as a slow password hash here (no
dictionary to try) and costs microseconds per request. The key id, in clear in the key, finds
the stored digest without trying every one; several keys per tenant make rotation a matter of
adding the new key, moving clients, then removing the old one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

PREFIX = "ms_"
KEY_ID = re.compile(r"^[a-z0-9]{6,32}$")
DIGEST = re.compile(r"^sha256\$[0-9a-f]{64}$")
_KEY = re.compile(r"^ms_(?P<id>[a-z0-9]{6,32})_(?P<secret>[A-Za-z0-9_-]{43})$")


def new_key(key_id: str | None = None) -> tuple[str, str]:
    """(the key to give the tenant, the digest to store)."""
    kid = key_id or secrets.token_hex(6)
    if not KEY_ID.match(kid):
        raise ValueError("a key id is 6-32 lower-case letters or digits")
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    key = f"{PREFIX}{kid}_{secret}"
    return key, digest_of(key)


def digest_of(key: str) -> str:
    return "sha256$" + hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The key id of something shaped like a key; None for anything else."""
    found = _KEY.match(key.strip())
    return found["id"] if found else None


def matches(key: str, digest: str) -> bool:
    """Constant-time check of a presented key against a stored digest."""
    return hmac.compare_digest(digest_of(key.strip()).encode(), digest.encode())
