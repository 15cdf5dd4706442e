"""`make bench`'s DKIM stage (scripts/bench_dkim.py): its message, its figures on a short run."""

from __future__ import annotations

import json
from typing import Any

import dkim
from support.scripts import script

bench_dkim = script("bench_dkim")


def test_the_message_is_20_kb_with_bare_lf_and_an_indented_html_part() -> None:
    data = bench_dkim.message()
    assert len(data) == 20 * 1024
    assert b"\r" not in data and b"\n    <tr>  <td" in data
    assert dkim.rfc822_parse(data)[0][0][0] == b"From"


def test_it_prints_every_figure_and_the_peer_ratio(monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setattr(bench_dkim, "ROUNDS", 1)
    monkeypatch.setattr(bench_dkim, "PER_ROUND", 3)
    monkeypatch.setattr(bench_dkim, "PEER_PER_ROUND", 1)
    assert bench_dkim.main() == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("rsa", "ed25519", "rsa_ed25519", "dkimpy_rsa"):
        assert figures[f"dkim_{name}_ms"] > 0
    assert figures["dkim_peer_ratio"] > 1  # dkimpy's pure-Python RSA is the slower
    assert figures["message_bytes"] == 20 * 1024
