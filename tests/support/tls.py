"""Self-signed certificates for the tests' TLS servers and clients (openssl)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path


def self_signed(directory: Path, cn: str) -> tuple[Path, Path]:
    """A fresh self-signed certificate for `cn` and its key in `directory`: (cert, key)."""
    cert, key = directory / f"{cn}.crt", directory / f"{cn}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def server_context(directory: Path, cn: str) -> ssl.SSLContext:
    """A server-side TLS context with a fresh self-signed certificate for `cn`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed(directory, cn))
    return context


def trusting_client_context() -> ssl.SSLContext:
    """A client-side TLS context that accepts any certificate: the test servers' are
    self-signed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
