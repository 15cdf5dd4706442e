"""`make bench`, engagement, the parts without Kafka (scripts/bench_engagement.py runs them):

- what tracking costs a delivery worker per recipient's copy: `Tracking.copy` (the token of
  every link and the pixel minted, the HTML part spliced and encoded back) of a 30 KB
  multipart/alternative newsletter with 40 links, in copies per second of one core, against an
  untracked copy (the worker then only asks `Tracking.choice`, which answers off, and sends the
  bytes as they are); and, once per message whatever its recipients, reading it
  (`tracking.rewrite.plan`: the MIME parts, the HTML decoded and its links found);
- what the engagement store that every ingest and API replica keeps costs: bytes per address
  (tracemalloc, around applying the records to the store's table as the compacted view does),
  the time to load them, and grade lookups per second.

Figures are CPU time of this process, the best of ROUNDS rounds (other load moves them little).
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))

from mailsluice.contracts.engagement import Engagement, encode_engagement, engagement_key
from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.worker.tracking import Tracking
from mailsluice.engagement.store import Table, apply_record, highest_grade
from mailsluice.tracking.rewrite import plan
from mailsluice.tracking.settings import TrackingSettings
from mailsluice.tracking.tokens import Mark, TrackingKeys

SIZE = 30 * 1024
LINKS = 40
ROUNDS = 3
COPIES = 200  # per round
ADDRESSES = 200_000
TENANTS = 5
DAY = 86400.0
NOW = 1_796_000_000.0
TRACKER = "https://t.bench.example"
UNSUBSCRIBE = "https://u.bench.example"


def newsletter(size: int = SIZE, links: int = LINKS, *, lines: bool = False) -> bytes:
    """A campaign's message as a worker holds it: multipart/alternative, a text part and a
    quoted-printable UTF-8 HTML part with `links` links (one of them the unsubscribe page),
    padded with table rows to `size` bytes or a little over; its HTML on one line, or with
    `lines` one row per line, as templates write it."""
    rows = [
        f'<tr><td class="item"><a href="https://shop.bench.example/p/{i}?utm_source=news&amp;'
        f'utm_campaign=winter">Article n°{i} — winter offers</a></td></tr>'
        for i in range(links - 1)
    ]
    rows.append(f'<tr><td><a href="{UNSUBSCRIBE}/u/static">Unsubscribe</a></td></tr>')
    text_lines = [f"Article {i}: https://shop.bench.example/p/{i}" for i in range(links - 1)]
    filler = '<tr><td style="padding:4px">Les offres de la saison, à découvrir.</td></tr>'
    msg = EmailMessage()
    msg["From"] = "News <news@bench.example>"
    msg["To"] = "reader@dest.example"
    msg["Subject"] = "Winter news"
    msg["Message-ID"] = "<bench-engagement@bench.example>"
    msg.set_content("\n".join(text_lines) + "\n")
    end = "\n" if lines else ""
    html = "<html><body><table>" + end + "".join(row + end for row in rows)
    while len(msg.as_bytes(policy=SMTP)) + len(html.encode()) * 1.1 < size:
        html += filler + end
    msg.add_alternative(html + "</table></body></html>", subtype="html", cte="quoted-printable")
    return msg.as_bytes(policy=SMTP)  # CRLF line ends, as ingest stores a message


def _tracking() -> tuple[Tracking, Envelope]:
    settings = TrackingSettings(url=TRACKER, default="all")
    keys = TrackingKeys({"b1": b"bench-tracking-key-0123456789abcdef"})
    env = Envelope(
        queue_id="benchq", pool="default", sender="news@bench.example",
        recipients=("reader@dest.example",), routing_key="dest.example", received_at=NOW,
        tenant="bench", campaign="winter",
    )  # fmt: skip
    return Tracking(settings, keys, UNSUBSCRIBE), env


def best_s(work: Callable[[], object], count: int, rounds: int) -> float:
    """The best CPU seconds one call of `work` took, over `rounds` rounds of `count` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(count):
            work()
        best = min(best, (time.process_time() - start) / count)
    return best


def rewriting(copies: int = COPIES, rounds: int = ROUNDS) -> dict[str, Any]:
    """Copies per second of one core: tracked (all: clicks and opens; opens only) and untracked,
    from the message's plan; and the plan's own time, once per message."""
    message = newsletter()
    tracking, env = _tracking()
    planned = plan(message)
    tracked = tracking.copy(env, "reader@dest.example", planned, "all")
    figures: dict[str, Any] = {
        "message_bytes": len(message),
        "links": LINKS,
        "tracked_copy_bytes": len(tracked),
    }
    for choice in ("all", "opens"):

        def one(c: str = choice) -> bytes:
            return tracking.copy(env, "r@dest.example", planned, c)

        seconds = best_s(one, copies, rounds)
        figures[f"tracked_{choice}_ms"] = round(seconds * 1000, 3)
        figures[f"tracked_{choice}_copies_per_s"] = round(1 / seconds)
    seconds = best_s(lambda: plan(message), max(1, copies // 4), rounds)
    figures["plan_ms"] = round(seconds * 1000, 3)
    by_line = plan(newsletter(lines=True))
    seconds = best_s(lambda: tracking.copy(env, "r@dest.example", by_line, "all"), copies, rounds)
    figures["tracked_all_lines_ms"] = round(seconds * 1000, 3)
    figures["tracked_all_lines_copies_per_s"] = round(1 / seconds)
    mark = Mark("open", "benchq", "r@dest.example", int(NOW), "default", "dest.example", "bench")
    target = "https://shop.bench.example/p/7?utm_source=news"
    seconds = best_s(lambda: tracking.keys.click_url(TRACKER, mark, 7, target), copies * 10, rounds)
    figures["mint_click_url_us"] = round(seconds * 1e6, 1)
    off = env.model_copy(update={"tracking": "off"})
    seconds = best_s(lambda: tracking.choice(off), copies * 50, rounds)
    figures["untracked_us"] = round(seconds * 1e6, 2)
    figures["untracked_copies_per_s"] = round(1 / seconds)
    return figures


def engagement_records(count: int) -> list[tuple[bytes, bytes]]:
    """`count` records of the engagement topic as Kafka holds them (key, value): TENANTS
    tenants, a third never engaged, some suppressed."""
    records = []
    for i in range(count):
        tenant, address = f"tenant-{i % TENANTS}", f"reader.{i}@mail{i % 97}.example.com"
        record = Engagement(
            tenant=tenant,
            address=address,
            first_delivered=NOW - 200 * DAY + i,
            last_delivered=NOW - DAY + i,
            last_engaged=0.0 if i % 3 == 0 else NOW - (i % 120) * DAY,
            deliveries=i % 14,
            unengaged_at=NOW - DAY if i % 31 == 0 else 0.0,
            ts=NOW,
        )
        records.append((engagement_key(tenant, address), encode_engagement(record)))
    return records


def _load(records: list[tuple[bytes, bytes]]) -> Table:
    table: Table = {}
    for key, value in records:
        apply_record(table, key, value)
    return table


def store_memory(count: int = ADDRESSES) -> dict[str, Any]:
    """Bytes per address of the store's table, its load time, and grade lookups per second."""
    records = engagement_records(count)
    gc.collect()
    started = time.process_time()
    table = _load(records)
    load_s = time.process_time() - started
    del table
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = _load(records)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    lookups = [
        (f"tenant-{i % TENANTS}", [f"Reader.{i}@mail{i % 97}.example.com"])
        for i in range(0, count, 7)
    ]
    started = time.process_time()
    graded = [highest_grade(table, tenant, rcpts, NOW) for tenant, rcpts in lookups]
    lookup_s = time.process_time() - started
    return {
        "addresses": len(table),
        "store_bytes_per_address": round(held / max(1, len(table))),
        "store_mb": round(held / 2**20, 1),
        "store_load_s": round(load_s, 2),
        "store_load_records_per_s": round(count / load_s) if load_s > 0 else None,
        "grade_lookups_per_s": round(len(graded) / lookup_s) if lookup_s > 0 else None,
    }


def _rows(figures: dict[str, Any]) -> list[str]:
    rows = [
        f"Tracking a copy at delivery, {figures['message_bytes']} byte newsletter, "
        f"{figures['links']} links, CPU of one core (best of {ROUNDS}):"
    ]
    labels = (("all", "clicks+opens", ""), ("opens", "opens only", ""))
    for name, label, note in (*labels, ("all_lines", "clicks+opens", " (HTML one row a line)")):
        ms, per_s = figures[f"tracked_{name}_ms"], figures[f"tracked_{name}_copies_per_s"]
        rows.append(f"  {label:<13} {ms:9.3f} ms {per_s:>9} copies/s{note}")
    rows.append(
        f"  {'untracked':<13} {figures['untracked_us'] / 1000:9.4f} ms "
        f"{figures['untracked_copies_per_s']:>9} copies/s (choice() says off: bytes as they are)"
    )
    rows.append(
        f"  {'once/message':<13} {figures['plan_ms']:9.3f} ms (plan: the MIME parts, the HTML "
        "decoded, its links found)"
    )
    rows.append(
        f"  tracked copy {figures['tracked_copy_bytes']} bytes; one click link's token "
        f"{figures['mint_click_url_us']} us (the rest is splicing and encoding back)"
    )
    return rows


def report(figures: dict[str, Any]) -> None:
    rows = _rows(figures) if "tracked_all_copies_per_s" in figures else []
    if "store_bytes_per_address" in figures:
        rows += [
            f"Engagement store (ingest and API), {figures['addresses']} addresses:",
            f"  bytes/address {figures['store_bytes_per_address']:>10}  "
            f"({figures['store_mb']} MB, tracemalloc)",
            f"  load          {figures['store_load_s']:>10} s  "
            f"({figures['store_load_records_per_s']} records/s, decode included)",
            f"  grade lookups {figures['grade_lookups_per_s']:>10} /s",
        ]
    print("\n".join(rows), flush=True)
