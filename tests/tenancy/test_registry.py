"""The tenants file as read by every edge: lookups, re-reading on change and keeping the last
good tenants when a change does not read."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mailsluice.tenancy.keys import new_key
from mailsluice.tenancy.model import TenancyError
from mailsluice.tenancy.registry import Registry

HASH = "pbkdf2_sha256$1$c2FsdA==$aGFzaA=="
KEY, DIGEST = new_key("k2026a")


def tenants_yaml(name: str = "acme", user: str = "acme-app") -> str:
    return f"""tenants:
  {name}:
    pools: [default]
    domains: [{name}.test]
    api_keys: [{{id: k2026a, hash: "{DIGEST}"}}]
    smtp:
      {user}: {{password: "{HASH}"}}
"""


def write(path: Path, text: str | bytes, mtime: float) -> None:
    """Write and set the modification time: a change is what the registry sees by mtime."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_lookups(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    write(path, tenants_yaml(), 1000)
    registry = Registry(str(path))
    acme = registry.get("acme")
    assert acme is not None and set(registry.tenants) == {"acme"}
    assert registry.by_api_key(KEY) == acme
    assert registry.by_api_key(f" {KEY} ") == acme
    assert registry.by_api_key(new_key("k2026a")[0]) is None  # right id, wrong secret
    assert registry.by_api_key(new_key("other1")[0]) is None
    assert registry.by_api_key("not a key") is None
    assert registry.by_smtp_user("acme-app") == acme
    assert registry.by_smtp_user("nobody") is None and registry.get("nobody") is None


def test_no_file_no_tenants() -> None:
    registry = Registry("")
    assert registry.tenants == {} and registry.by_smtp_user("acme-app") is None


def test_a_wrong_file_at_start_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    write(path, "tenants: [1, 2]", 1000)
    with pytest.raises(TenancyError):
        Registry(str(path))


def test_a_file_not_there_yet_is_no_tenants_until_it_appears(tmp_path: Path) -> None:
    # the chart mounts the operator's Secret as optional: ingest and the API start before it
    path = tmp_path / "tenants.yaml"
    registry = Registry(str(path))
    assert registry.tenants == {} and registry.by_api_key(KEY) is None
    write(path, tenants_yaml(), 1000)
    tenant = registry.by_api_key(KEY)
    assert tenant is not None and tenant.name == "acme"
    path.unlink()  # gone again (a Secret unmounted): the last good tenants stay
    assert registry.get("acme") is not None


def test_reloads_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    write(path, tenants_yaml(), 1000)
    registry = Registry(str(path))
    write(path, tenants_yaml("globex", "globex-app"), 1000)
    assert registry.get("acme") is not None  # same mtime: not read again
    write(path, tenants_yaml("globex", "globex-app"), 2000)
    assert registry.get("acme") is None
    globex = registry.by_smtp_user("globex-app")
    assert globex is not None and globex.name == "globex"
    assert registry.by_api_key(KEY) == globex


@pytest.mark.parametrize(
    "broken",
    [
        "tenants: {acme: {pools: [default]}}",  # no domains
        "tenants: [unclosed",  # not YAML
        b"tenants:\n  \xff\xfe: {}\n",  # not UTF-8
        tenants_yaml() + "  globex:\n    pools: [default]\n    domains: [acme.test]\n",
    ],
)
def test_keeps_the_last_good_tenants_on_a_broken_file(
    tmp_path: Path, broken: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tenants.yaml"
    write(path, tenants_yaml(), 1000)
    registry = Registry(str(path))
    write(path, broken, 2000)
    with caplog.at_level(logging.WARNING):
        assert registry.by_smtp_user("acme-app") is not None
        assert registry.by_api_key(KEY) is not None
    # warned once for the change, not on every lookup
    assert caplog.text.count("keeping the previous tenants") == 1
    write(path, tenants_yaml("globex", "globex-app"), 3000)
    assert registry.by_smtp_user("globex-app") is not None  # fixed: read again


def test_a_vanished_file_keeps_the_tenants(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    write(path, tenants_yaml(), 1000)
    registry = Registry(str(path))
    path.unlink()
    assert registry.get("acme") is not None
    write(path, tenants_yaml("globex", "globex-app"), 2000)
    assert registry.get("globex") is not None
