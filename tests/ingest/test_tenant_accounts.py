"""Tenant SMTP users at ingest without sockets: they authenticate like users-file users and
send with their tenant's pools, domains and name; a name in both files is refused."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mailsluice.ingest.auth import Credentials, hash_password
from mailsluice.ingest.tenants import Accounts, AccountsError
from mailsluice.tenancy.registry import Registry

HASH = hash_password("s3cret", scheme="pbkdf2_sha256")


def files(tmp_path: Path, users: str, tenants: str) -> tuple[Path, Path]:
    users_file, tenants_file = tmp_path / "users.yaml", tmp_path / "tenants.yaml"
    users_file.write_text(users)
    tenants_file.write_text(tenants)
    return users_file, tenants_file


def tenants_yaml(user: str) -> str:
    return f"""tenants:
  acme:
    pools: [bulk, default]
    domains: [acme.test, "*.acme.test"]
    smtp:
      {user}: {{password: "{HASH}"}}
"""


USERS = f'users:\n  legacy: {{password: "{HASH}", pools: [default]}}\n'


def accounts(tmp_path: Path, user: str = "acme-app") -> tuple[Accounts, Path]:
    users_file, tenants_file = files(tmp_path, USERS, tenants_yaml(user))
    return Accounts(Credentials(str(users_file)), Registry(str(tenants_file))), tenants_file


def test_a_tenant_user_sends_for_its_tenant(tmp_path: Path) -> None:
    both, _ = accounts(tmp_path)
    user = both.authenticate("acme-app", "s3cret")
    assert user is not None
    assert (user.name, user.tenant, user.pools, user.default_pool) == (
        "acme-app",
        "acme",
        ("bulk", "default"),
        "bulk",
    )
    assert user.domains.owns_address("news@eu.acme.test")
    assert not user.domains.owns_address("news@globex.test")
    assert both.authenticate("acme-app", "wrong") is None
    assert both.authenticate("nobody", "s3cret") is None
    legacy = both.authenticate("legacy", "s3cret")
    assert legacy is not None and legacy.tenant == "" and legacy.domains.unrestricted
    assert both.pools() == {"bulk", "default"}


def test_a_name_in_both_files_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(AccountsError, match="both the users file and the tenants file: legacy"):
        accounts(tmp_path, user="legacy")


def test_a_name_in_both_after_a_change_authenticates_as_neither(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    both, tenants_file = accounts(tmp_path)
    tenants_file.write_text(tenants_yaml("legacy"))
    os.utime(tenants_file, (5000, 5000))
    with caplog.at_level(logging.ERROR):
        assert both.authenticate("legacy", "s3cret") is None
    assert "'legacy' is in both the users and the tenants file" in caplog.text
