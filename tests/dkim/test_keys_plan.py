"""DKIM keys from a directory (a Secret mount) and the rotation plan on a simulated clock."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailsluice.dkim.keys import DkimKeyError, generate, key_file_name, load_keys
from mailsluice.dkim.plan import ScheduleError, SigningPlan, load_schedule, parse_schedule

DAY = 86400.0
T0 = datetime(2026, 7, 1, tzinfo=UTC).timestamp()


def _write(directory: Path, domain: str, selector: str, algorithm: str) -> None:
    key = generate(domain, selector, "rsa" if algorithm == "rsa" else "ed25519")
    (directory / key_file_name(domain, selector)).write_bytes(key.private_pem())


def test_a_secret_mount_gives_every_selector_and_ignores_the_rest(tmp_path: Path) -> None:
    _write(tmp_path, "example.com", "r2026", "rsa")
    _write(tmp_path, "example.com", "e2026", "ed25519")
    _write(tmp_path, "other.example", "s1", "ed25519")
    (tmp_path / "..data").mkdir()  # what a Secret mount also holds
    (tmp_path / "README").write_text("not a key")
    keys = load_keys(tmp_path)
    assert [(k.domain, k.selector, k.algorithm) for k in keys] == [
        ("example.com", "e2026", "ed25519"),
        ("example.com", "r2026", "rsa"),
        ("other.example", "s1", "ed25519"),
    ]
    rsa_key = keys[1]
    assert rsa_key.private.key_size == 2048  # type: ignore[union-attr]
    assert rsa_key.record_name == "r2026._domainkey.example.com"
    assert rsa_key.dns_record().startswith("v=DKIM1; k=rsa; p=MIIBIjAN")
    ed = keys[0].dns_record()
    assert ed.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(ed.rpartition("p=")[2])) == 32  # RFC 8463: the raw key


def test_keys_dkim_cannot_use_are_refused_with_their_name(tmp_path: Path) -> None:
    (tmp_path / key_file_name("example.com", "bad")).write_text("not PEM")
    with pytest.raises(DkimKeyError, match=r"bad\._domainkey\.example\.com"):
        load_keys(tmp_path)
    ecdsa = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / key_file_name("example.com", "bad")).write_bytes(ecdsa)
    with pytest.raises(DkimKeyError, match="only RSA and Ed25519"):
        load_keys(tmp_path)


SCHEDULE = """
grace_days: 7
domains:
  example.com:
    - {selector: old, active_from: 2026-01-01T00:00:00Z}
    - {selector: new, active_from: 2026-07-01T00:00:00Z}
"""


def _plan(tmp_path: Path) -> SigningPlan:
    (tmp_path / "schedule.yaml").write_text(SCHEDULE)
    keys = [
        generate("example.com", "old", "rsa"),
        generate("example.com", "new", "rsa"),
        generate("example.com", "ed", "ed25519"),  # no schedule entry: signs from the start
    ]
    return SigningPlan(keys, load_schedule(tmp_path / "schedule.yaml"))


def test_rotation_switches_at_the_configured_time_and_keeps_the_old_key_published(
    tmp_path: Path,
) -> None:
    plan = _plan(tmp_path)

    def signing(t: float) -> list[str]:
        return [k.selector for k in plan.signing_keys("Example.COM", t)]

    def published(t: float) -> dict[str, bool]:
        return {p.key.selector: p.signing for p in plan.published("example.com", t)}

    assert signing(T0 - 1) == ["old", "ed"]
    assert published(T0 - 1) == {"ed": True, "old": True, "new": False}  # new is published ahead
    assert signing(T0) == ["new", "ed"]
    assert published(T0) == {"ed": True, "old": False, "new": True}
    assert published(T0 + 7 * DAY - 1) == {"ed": True, "old": False, "new": True}
    assert published(T0 + 7 * DAY) == {"ed": True, "new": True}  # grace over: unpublish old
    assert plan.signing_keys("unknown.example", T0) == []


def test_schedules_that_cannot_be_followed_are_refused() -> None:
    with pytest.raises(ScheduleError, match="time zone"):
        parse_schedule({"domains": {"a.example": [{"selector": "s", "active_from": "2026-01-01"}]}})
    with pytest.raises(ScheduleError):
        parse_schedule({"domains": {"a.example": [{"active_from": "2026-01-01T00:00:00Z"}]}})
    with pytest.raises(ScheduleError, match="start together"):
        SigningPlan(
            [generate("a.example", "s1", "ed25519"), generate("a.example", "s2", "ed25519")]
        )
