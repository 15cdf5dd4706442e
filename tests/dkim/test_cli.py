"""`mailsluice dkim keygen` and `mailsluice dkim check` (against the test DNS server)."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import pytest

from mailsluice.cli import main
from mailsluice.dkim.keys import load_keys


def _keygen(out: Path, selector: str, algorithm: str, capsys: Any) -> str:
    assert main(["dkim", "keygen", "example.com", selector, "--algorithm", algorithm,
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out.strip()
    name, _, rest = printed.partition(". IN TXT ")
    assert name == f"{selector}._domainkey.example.com"
    return "".join(re.findall(r'"([^"]*)"', rest))


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_keygen_writes_a_private_key_and_prints_its_record(
    algorithm: str, tmp_path: Path, capsys: Any
) -> None:
    record = _keygen(tmp_path, "s1", algorithm, capsys)
    (key,) = load_keys(tmp_path)
    assert (key.selector, key.algorithm) == ("s1", algorithm)
    assert record == key.dns_record() and record.startswith(f"v=DKIM1; k={algorithm}; p=")
    mode = (tmp_path / "s1._domainkey.example.com.pem").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert main(["dkim", "keygen", "example.com", "s1", "--out", str(tmp_path)]) == 1  # kept


def test_check_compares_the_published_records_with_the_keys_in_use(
    tmp_path: Path, capsys: Any, dns_zone: Any, dns_nameserver: str, monkeypatch: Any
) -> None:
    rsa = _keygen(tmp_path, "r1", "rsa", capsys)
    ed = _keygen(tmp_path, "e1", "ed25519", capsys)
    monkeypatch.setenv("MAILSLUICE_DKIM_KEYS_DIR", str(tmp_path))
    monkeypatch.setenv("MAILSLUICE_DNS_NAMESERVERS", dns_nameserver)
    dns_zone.set_txt("r1._domainkey.example.com", [rsa])
    assert main(["dkim", "check", "example.com"]) == 1  # e1 is not published
    out = capsys.readouterr().out
    assert "r1._domainkey.example.com rsa signing: ok" in out
    assert "e1._domainkey.example.com ed25519 signing: MISSING" in out
    dns_zone.set_txt("e1._domainkey.example.com", [ed.replace("p=", "p=AAAA")])
    assert main(["dkim", "check", "example.com"]) == 1
    assert "e1._domainkey.example.com ed25519 signing: MISMATCH" in capsys.readouterr().out
    dns_zone.set_txt("e1._domainkey.example.com", [ed])
    assert main(["dkim", "check", "example.com"]) == 0
    assert main(["dkim", "check", "other.example"]) == 1  # no key for it


def test_a_delivery_worker_loads_its_signer_from_settings_and_refuses_bad_keys(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    from mailsluice.delivery.service import dkim_signer
    from mailsluice.delivery.transport.signing import DkimSigner

    monkeypatch.delenv("MAILSLUICE_DKIM_KEYS_DIR", raising=False)
    assert dkim_signer() is None  # signing is off without keys
    _keygen(tmp_path, "s1", "ed25519", capsys)
    monkeypatch.setenv("MAILSLUICE_DKIM_KEYS_DIR", str(tmp_path))
    monkeypatch.setenv("MAILSLUICE_DKIM_DOMAIN", "Pool.Example.")
    signer = dkim_signer()
    assert isinstance(signer, DkimSigner) and signer.domain == "pool.example"
    (tmp_path / "s2._domainkey.example.com.pem").write_text("garbage")
    with pytest.raises(SystemExit) as exited:
        dkim_signer()
    assert exited.value.code == 2
    assert "s2._domainkey.example.com" in capsys.readouterr().err
