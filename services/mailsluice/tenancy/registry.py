"""The tenants file (a Kubernetes Secret mount, or a file for `make run`), re-read when it
changes, and the lookups every edge needs: a tenant by API key, by SMTP user, by name."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import yaml

from mailsluice.tenancy.keys import key_id_of, matches
from mailsluice.tenancy.model import Tenant, parse_tenants

log = logging.getLogger(__name__)


class Registry:
    """Tenants by name, with indexes by API key id and SMTP user. `path` "" : no tenants."""

    def __init__(self, path: str = "", tenants: Mapping[str, Tenant] | None = None) -> None:
        self._path = path
        self._mtime: float | None = None
        self._broken_mtime: float | None = None  # of a file that did not read
        self._tenants: dict[str, Tenant] = {}
        self._by_key: dict[str, tuple[Tenant, str]] = {}
        self._by_smtp: dict[str, Tenant] = {}
        if tenants is not None:
            self._index(dict(tenants))
        self._missing_logged = False
        if path and os.path.exists(path):
            self._reload()  # a wrong file at start is an error the caller reports
        elif path:
            # The chart mounts the operator's Secret as optional: a pod may start before the
            # operator wrote it. No tenants until it appears; every lookup checks again.
            log.info("tenants file %s not there yet; no tenants until it is", path)
            self._missing_logged = True

    def _reload(self) -> None:
        mtime = os.stat(self._path).st_mtime
        with open(self._path, encoding="utf-8") as fh:
            tenants = parse_tenants(yaml.safe_load(fh))
        self._index(tenants)
        self._mtime = mtime

    def _index(self, tenants: dict[str, Tenant]) -> None:
        self._tenants = tenants
        self._by_key = {k.id: (t, k.hash) for t in tenants.values() for k in t.api_keys}
        self._by_smtp = {user: t for t in tenants.values() for user in t.smtp}

    def refresh(self) -> None:
        """Re-read the file when it changed; a file that no longer reads keeps the last good
        tenants (a half-written Secret update must not lock everyone out)."""
        if not self._path:
            return
        try:
            mtime = os.stat(self._path).st_mtime
        except FileNotFoundError:
            if not self._missing_logged:
                log.warning("tenants file %s is gone; keeping the previous tenants", self._path)
                self._missing_logged = True
            return
        self._missing_logged = False
        try:
            if mtime in (self._mtime, self._broken_mtime):
                return
            self._reload()
        except (OSError, ValueError, yaml.YAMLError) as exc:  # TenancyError, UnicodeDecodeError
            # read again only once it changes: not on every lookup, nor a warning each time
            self._broken_mtime = mtime if isinstance(exc, (ValueError, yaml.YAMLError)) else None
            log.warning("tenants file unreadable (%s); keeping the previous tenants", exc)

    @property
    def tenants(self) -> dict[str, Tenant]:
        self.refresh()
        return dict(self._tenants)

    def get(self, name: str) -> Tenant | None:
        self.refresh()
        return self._tenants.get(name)

    def by_api_key(self, key: str) -> Tenant | None:
        """The tenant a presented API key belongs to, or None (constant time in the digest)."""
        self.refresh()
        kid = key_id_of(key)
        found = self._by_key.get(kid) if kid else None
        if found is None:
            return None
        tenant, digest = found
        return tenant if matches(key, digest) else None

    def by_smtp_user(self, username: str) -> Tenant | None:
        self.refresh()
        return self._by_smtp.get(username)
