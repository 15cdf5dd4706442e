"""DKIM private keys: PEM files named `<selector>._domainkey.<domain>.pem`, one per selector, in
a directory such as a Kubernetes Secret mount (a Secret's keys cannot hold '/', so the DNS name
of the record is the file name). RSA (2048 bits or more is advised, 1024 the least accepted) and
Ed25519 (RFC 8463); several selectors per domain."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

Algorithm = Literal["rsa", "ed25519"]
ALGORITHMS: tuple[Algorithm, ...] = ("rsa", "ed25519")
KEY_SUFFIX = ".pem"
DOMAINKEY = "._domainkey."
MIN_RSA_BITS = 1024
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class DkimKeyError(ValueError):
    """A key file that cannot be used: unreadable, not PEM, a type or size DKIM does not take."""


@dataclass(frozen=True)
class SigningKey:
    """One selector's private key."""

    domain: str
    selector: str
    private: PrivateKey

    @property
    def algorithm(self) -> Algorithm:
        return "rsa" if isinstance(self.private, rsa.RSAPrivateKey) else "ed25519"

    @property
    def signature_algorithm(self) -> bytes:
        return b"rsa-sha256" if self.algorithm == "rsa" else b"ed25519-sha256"

    @property
    def record_name(self) -> str:
        return f"{self.selector}{DOMAINKEY}{self.domain}"

    def sign(self, headers: bytes) -> bytes:
        """The signature over the canonical signed headers: RSASSA-PKCS1-v1_5 with SHA-256, or
        Ed25519 over their SHA-256 digest (RFC 8463 §3)."""
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(headers, padding.PKCS1v15(), hashes.SHA256())
        return self.private.sign(hashlib.sha256(headers).digest())

    def public_key_b64(self) -> str:
        """The p= value: SubjectPublicKeyInfo for RSA, the raw 32 bytes for Ed25519."""
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            raw = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        else:
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii")

    def dns_record(self) -> str:
        """The TXT record to publish at `record_name`."""
        return f"v=DKIM1; k={self.algorithm}; p={self.public_key_b64()}"

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def parse_private_key(pem: bytes, domain: str, selector: str) -> SigningKey:
    """A SigningKey from PEM text (PKCS#1 or PKCS#8, unencrypted); DkimKeyError when unusable."""
    name = f"{selector}{DOMAINKEY}{domain}"
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimKeyError(f"{name}: not a PEM private key ({exc})") from None
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise DkimKeyError(f"{name}: RSA key of {private.key_size} bits")
    elif not isinstance(private, ed25519.Ed25519PrivateKey):
        raise DkimKeyError(f"{name}: only RSA and Ed25519 keys sign DKIM")
    return SigningKey(domain.lower().rstrip("."), selector, private)


def name_of(file_name: str) -> tuple[str, str] | None:
    """(domain, selector) of a key file name, None for files that are no key."""
    if not file_name.endswith(KEY_SUFFIX) or DOMAINKEY not in file_name:
        return None
    selector, _, domain = file_name.removesuffix(KEY_SUFFIX).partition(DOMAINKEY)
    if not selector or not domain:
        return None
    return domain.lower(), selector


def load_keys(directory: Path) -> list[SigningKey]:
    """Every key file of `directory`, by domain then selector; other files are ignored (a Secret
    mount also holds `..data` links)."""
    keys: list[SigningKey] = []
    for path in sorted(directory.iterdir()):
        named = name_of(path.name)
        if named is None or not path.is_file():
            continue
        keys.append(parse_private_key(path.read_bytes(), *named))
    return sorted(keys, key=lambda k: (k.domain, k.selector))


def generate(domain: str, selector: str, algorithm: Algorithm) -> SigningKey:
    private: PrivateKey
    if algorithm == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return SigningKey(domain.lower().rstrip("."), selector, private)


def key_file_name(domain: str, selector: str) -> str:
    return f"{selector}{DOMAINKEY}{domain}{KEY_SUFFIX}"
