"""`make bench`'s engagement stage (scripts/bench_engagement.py): its newsletter is tracked
whole, its tokens are the tracker's, its figures come out on a short run; and (Kafka) the
tracker part against a real broker and a real `mailsluice tracker`."""

from __future__ import annotations

import email
import json
import re
from email.policy import default
from typing import Any

import pytest
from support.scripts import script

from mailsluice.tracking.rewrite import plan
from mailsluice.tracking.tokens import TrackingKeys

bench = script("bench_engagement")
cpu = script("bench_engagement_cpu")


def test_the_newsletter_is_30_kb_and_every_link_but_unsubscribe_is_tracked() -> None:
    message = cpu.newsletter()
    assert 30 * 1024 <= len(message) < 36 * 1024
    assert b"\r\n" in message and b"\n" not in message.replace(b"\r\n", b"")
    tracking, env = cpu._tracking()
    copy = tracking.copy(env, "r@dest.example", plan(message), "all")
    parsed = email.message_from_bytes(copy, policy=default)
    html = parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert len(re.findall(f'"{cpu.TRACKER}/c/[A-Za-z0-9_-]{{20,}}"', html)) == cpu.LINKS - 1
    assert f"{cpu.TRACKER}/o/" in html and f'"{cpu.UNSUBSCRIBE}/u/static"' in html


def test_the_tracker_urls_hold_tokens_the_tracker_verifies() -> None:
    keys = TrackingKeys({bench.KEY_ID: bench.SECRET.encode()})
    clicks = bench.urls("http://t", "click", 2)
    opens = bench.urls("http://t", "open", 2)
    assert len(clicks) == 10 and len(opens) == 2
    assert keys.verify(clicks[3].rpartition("/c/")[2]).target == "https://shop.example/p/3"
    assert keys.verify(opens[1].rpartition("/o/")[2]).recipient == "reader1@dest.example"


def test_a_short_run_without_kafka_prints_every_figure(capsys: Any) -> None:
    argv = ["--no-tracker", "--addresses", "2000", "--copies", "3"]
    assert bench.main(argv) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["errors"] == []
    assert figures["addresses"] == 2000
    assert 0 < figures["store_bytes_per_address"] < 1000
    for name in ("tracked_all", "tracked_opens", "untracked"):
        assert figures[f"{name}_copies_per_s"] > 0
    assert figures["store_load_records_per_s"] > 0 and figures["grade_lookups_per_s"] > 0
    assert figures["tracked_copy_bytes"] > figures["message_bytes"] and figures["plan_ms"] > 0


@pytest.mark.kafka
def test_the_tracker_part_writes_an_event_per_request(capsys: Any) -> None:
    argv = ["--seconds", "0.5", "--clients", "2", "--messages", "5"]
    argv += ["--addresses", "100", "--copies", "1"]
    assert bench.main(argv) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    requests = figures["click"]["requests"] + figures["open"]["requests"]
    assert requests > 0 and figures["click"]["failed"] == figures["open"]["failed"] == 0
    assert figures["events"] == requests
    assert figures["events_by_type"] == {
        "click": figures["click"]["requests"],
        "open": figures["open"]["requests"],
    }
    assert figures["tracker_rss_mb"] > 0
