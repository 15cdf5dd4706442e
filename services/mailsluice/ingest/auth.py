"""SMTP AUTH users: salted password hashes (stdlib only) and the credentials file.

The file is YAML or JSON (JSON is YAML), either `{users: {...}}` or the user mapping itself:

    users:
      app1:
        password: "scrypt$16384$8$1$<salt b64>$<hash b64>"
        pools: [default, bulk]
        default_pool: default
        domains: [tenant-a.test, "*.tenant-a.test"]
        tenant: tenant-a

`domains` are the sender domains the user owns (policy/owners.py): MAIL FROM and the header
`From:` must be in one of them. A user without `domains` may send as any domain (as before they
existed); a warning names such users whenever the file is loaded. `tenant` names who the user
sends for (its mail's suppression scopes and unsubscribe tokens, ingest/scopes.py); without it
the user name is the tenant. It is a scope name: letters, digits and `._@+-`.

It may be a Kubernetes Secret mount: the file is re-read when its modification time changes
(Secret updates swap a symlink). Make a hash with `python -m mailsluice.ingest.auth hash`.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from mailsluice.contracts.suppressions import Scope
from mailsluice.policy.owners import UNRESTRICTED, OwnedDomains, OwnersError

log = logging.getLogger(__name__)

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
PBKDF2_ITERATIONS = 600_000
SALT_BYTES = 16
KEY_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, *, scheme: str = "scrypt", salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    secret = password.encode()
    if scheme == "scrypt":
        key = hashlib.scrypt(secret, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=KEY_BYTES)
        return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"
    if scheme == "pbkdf2_sha256":
        key = hashlib.pbkdf2_hmac("sha256", secret, salt, PBKDF2_ITERATIONS, KEY_BYTES)
        return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${_b64(salt)}${_b64(key)}"
    raise ValueError(f"unknown hash scheme {scheme!r}")


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of a password against a stored hash; False for a malformed hash."""
    try:
        scheme, *fields = encoded.split("$")
        secret = password.encode()
        if scheme == "scrypt" and len(fields) == 5:
            n, r, p = (int(x) for x in fields[:3])
            salt, want = base64.b64decode(fields[3]), base64.b64decode(fields[4])
            got = hashlib.scrypt(
                secret, salt=salt, n=n, r=r, p=p, dklen=len(want), maxmem=256 * 1024 * 1024
            )
        elif scheme == "pbkdf2_sha256" and len(fields) == 3:
            salt, want = base64.b64decode(fields[1]), base64.b64decode(fields[2])
            got = hashlib.pbkdf2_hmac("sha256", secret, salt, int(fields[0]), len(want))
        else:
            return False
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


# Verified against when the user does not exist, so unknown users cost as much as known ones.
_DUMMY_HASH = hash_password("not-a-password", salt=b"\0" * SALT_BYTES)


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    pools: tuple[str, ...]
    default_pool: str
    domains: OwnedDomains = UNRESTRICTED
    tenant: str = ""  # "" : the user name
    tracking: str = ""  # the tenant's default open and click tracking ("" : the pool's)


class CredentialsError(ValueError):
    pass


def parse_users(data: Any, fallback_pool: str) -> dict[str, User]:
    if isinstance(data, Mapping) and isinstance(data.get("users"), Mapping):
        data = data["users"]
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise CredentialsError("credentials must be a mapping of user names")
    users: dict[str, User] = {}
    for name, spec in data.items():
        if not isinstance(spec, Mapping) or not isinstance(spec.get("password"), str):
            raise CredentialsError(f"user {name!r}: needs a password hash")
        if spec["password"].split("$", 1)[0] not in ("scrypt", "pbkdf2_sha256"):
            raise CredentialsError(f"user {name!r}: password must be a scrypt/pbkdf2 hash")
        pools = spec.get("pools") or [spec.get("default_pool") or fallback_pool]
        if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
            raise CredentialsError(f"user {name!r}: pools must be a list of names")
        default = spec.get("default_pool") or pools[0]
        if default not in pools:
            raise CredentialsError(f"user {name!r}: default_pool must be one of pools")
        users[str(name)] = User(
            str(name),
            spec["password"],
            tuple(pools),
            default,
            parse_domains(name, spec),
            parse_tenant(name, spec),
        )
    return users


def parse_tenant(name: object, spec: Mapping[str, Any]) -> str:
    tenant = spec.get("tenant")
    if tenant is None:
        return ""
    try:
        if not isinstance(tenant, str) or tenant != tenant.strip():
            raise ValueError(tenant)
        Scope.parse(f"tenant:{tenant}")  # a scope name (contracts/suppressions.py)
    except ValueError:
        raise CredentialsError(
            f"user {name!r}: tenant must be a name of letters, digits and ._@+-"
        ) from None
    return tenant


def parse_domains(name: object, spec: Mapping[str, Any]) -> OwnedDomains:
    domains = spec.get("domains")
    if domains is None:
        return UNRESTRICTED
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise CredentialsError(f"user {name!r}: domains must be a list of domains")
    try:
        return OwnedDomains.parse(domains)
    except OwnersError as exc:
        raise CredentialsError(f"user {name!r}: {exc}") from None


def warn_unrestricted(users: Mapping[str, User]) -> None:
    names = sorted(name for name, user in users.items() if user.domains.unrestricted)
    if names:
        log.warning("users without `domains` may send as any sender domain: %s", ", ".join(names))


class Credentials:
    """The users file, re-read when it changes on disk."""

    def __init__(self, path: str, fallback_pool: str = "default") -> None:
        self._path = path
        self._fallback = fallback_pool
        self._mtime: float | None = None
        self._users: dict[str, User] = {}
        if path:
            self._reload()

    def _reload(self) -> None:
        mtime = os.stat(self._path).st_mtime
        with open(self._path, encoding="utf-8") as fh:
            self._users = parse_users(yaml.safe_load(fh), self._fallback)
        self._mtime = mtime
        warn_unrestricted(self._users)

    def _refresh(self) -> None:
        if not self._path:
            return
        try:
            if os.stat(self._path).st_mtime != self._mtime:
                self._reload()
        except (OSError, ValueError, yaml.YAMLError):
            # Keep the last good users: a half-written Secret update must not lock everyone out.
            log.warning("credentials file unreadable; keeping the previous users", exc_info=True)

    @property
    def users(self) -> dict[str, User]:
        self._refresh()
        return dict(self._users)

    def pools(self) -> set[str]:
        return {pool for user in self.users.values() for pool in user.pools}

    def user(self, username: str) -> User | None:
        self._refresh()
        return self._users.get(username)

    def authenticate(self, username: str, password: str) -> User | None:
        return verified(self.user(username), password)


def verified(user: User | None, password: str) -> User | None:
    """`user` when the password is its own; None otherwise, at the same cost when there is
    no such user (a dummy hash is checked), so timing tells no user names."""
    ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
    return user if ok and user is not None else None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "hash":
        print("usage: python -m mailsluice.ingest.auth hash [--pbkdf2]", file=sys.stderr)
        return 2
    scheme = "pbkdf2_sha256" if "--pbkdf2" in args else "scrypt"
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("empty password", file=sys.stderr)
        return 2
    print(hash_password(password, scheme=scheme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
