"""Sealed tokens: a few text fields encrypted and authenticated with AES-SIV (RFC 5297) under a
named key, for links and addresses that must not be forged, altered, enumerated or read.

A sealed token is `version byte + key id + NUL + SIV(fields)`; the head (version and key id)
is in the clear and bound to the rest as associated data. The 128-bit synthetic IV is a MAC
over everything, so without the key nothing verifies; SIV is deterministic (the same fields
give the same token, which tells nothing the fields do not) and needs no nonce. Each use has
its own purpose label, from which its cipher keys are derived: an unsubscribe token never
verifies as a tracking token, even under the same secret. Keys rotate: a ring holds several,
seals with the active one and opens with any it still holds. Pure: no I/O but `read_keys`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

SIV_BYTES = 16  # the synthetic IV that authenticates the token
MIN_KEY_BYTES = 16
KEY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")
SEP = "\x1f"  # no address, name, label or URL we seal holds a control character
_KID_END = b"\x00"

Failure = Literal["malformed", "unknown_key", "forged"]


class TokenError(ValueError):
    """A token that does not verify; `reason` says why (a metric label)."""

    def __init__(self, reason: Failure, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Failure = reason


class Sealer:
    """The keys tokens of one purpose are sealed with, by key id; `active` seals, every key
    opens."""

    def __init__(
        self, keys: Mapping[str, bytes], active: str, *, purpose: bytes, version: bytes
    ) -> None:
        for kid, secret in keys.items():
            if not KEY_ID.match(kid):
                raise ValueError(f"bad key id {kid!r} (a-z, 0-9, '-', at most 16)")
            if len(secret) < MIN_KEY_BYTES:
                raise ValueError(f"key {kid!r} is shorter than {MIN_KEY_BYTES} bytes")
        if not active and len(keys) == 1:
            active = next(iter(keys))
        if keys and active not in keys:
            raise ValueError(f"the active key {active!r} is not among the keys {sorted(keys)}")
        # derived once: a worker seals a token for every recipient (and link) of bulk mail
        self._ciphers = {kid: _cipher(purpose, secret) for kid, secret in keys.items()}
        self.active = active
        self.version = version

    def __bool__(self) -> bool:
        return bool(self._ciphers)

    def seal(self, fields: Sequence[str]) -> bytes:
        """The token's bytes (encode them for where they go: base32, base64url)."""
        if any(SEP in f for f in fields) or not self._ciphers:
            raise ValueError("cannot seal: no key, or a field holds a control character")
        head = self.version + self.active.encode() + _KID_END
        return head + self._ciphers[self.active].encrypt(SEP.join(fields).encode(), [head])

    def open(self, raw: bytes) -> list[str]:
        """The fields of a genuine token's bytes; TokenError for anything else."""
        end = raw.find(_KID_END)
        if not raw.startswith(self.version) or end < 0:
            raise TokenError("malformed", "unknown layout")
        kid = raw[len(self.version) : end].decode("ascii", errors="replace")
        if not KEY_ID.match(kid) or len(raw) - end - 1 <= SIV_BYTES:
            raise TokenError("malformed", "unknown layout")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise TokenError("unknown_key", f"key {kid[:20]!r}")
        try:
            return cipher.decrypt(raw[end + 1 :], [raw[: end + 1]]).decode().split(SEP)
        except InvalidTag:
            raise TokenError("forged", "does not authenticate") from None
        except UnicodeDecodeError:
            raise TokenError("malformed", "not UTF-8") from None


def _cipher(purpose: bytes, secret: bytes) -> AESSIV:
    # AES-256-SIV wants 64 key bytes; the secrets are random (MIN_KEY_BYTES at least), so a
    # hash with a purpose label is key derivation enough
    return AESSIV(hashlib.sha512(purpose + b"\x00" + secret).digest())


def read_keys(inline: str, keys_dir: str) -> dict[str, bytes]:
    """Keys given inline (`ID:SECRET,ID:SECRET`) and as files of a directory (a Secret mount:
    one file per key, named by its id)."""
    found: dict[str, bytes] = {}
    for item in inline.split(","):
        kid, sep, secret = item.strip().partition(":")
        if sep:
            found[kid.strip()] = secret.strip().encode()
    if keys_dir:
        for path in sorted(Path(keys_dir).iterdir()):
            # a Secret mount's own entries (..data, ..2026_...) start with a dot
            if path.is_file() and not path.name.startswith("."):
                found[path.name] = path.read_bytes().strip()
    return found
