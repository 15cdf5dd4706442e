"""Quota counts shared across replicas: the tenant usage record, and what a replica takes from
the topic and reports to it, on a simulated clock (no Kafka; test_usage_kafka.py has it)."""

from __future__ import annotations

import json

import pytest

from mailsluice.contracts.usage import TenantUsage, decode_usage, encode_usage, usage_key
from mailsluice.contracts.versioning import NewerSchema
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.tenancy.quota import DAY_S, HOUR_S, QuotaBook
from mailsluice.tenancy.usage import UsageSharing

DAY = 20_000 * DAY_S
USAGE = TenantUsage("ingest-7f-1", "acme", "hour", DAY, 42, DAY + 5.0)


def test_the_record_round_trips_and_is_keyed_per_replica_and_window() -> None:
    assert decode_usage(encode_usage(USAGE)) == USAGE
    assert usage_key(USAGE) == f"ingest-7f-1|acme|hour|{DAY}".encode()


def test_a_newer_or_broken_record_is_refused() -> None:
    newer = json.loads(encode_usage(USAGE))
    newer["v"] = 2
    with pytest.raises(NewerSchema):
        decode_usage(json.dumps(newer).encode())
    for broken in (b"[]", b'{"v": 1, "tenant": "acme"}', b"not json"):
        with pytest.raises(ValueError):
            decode_usage(broken)


@pytest.mark.parametrize(
    ("field", "value"), [("window", "week"), ("tenant", "a|b"), ("replica", ""), ("count", -1)]
)
def test_values_a_record_may_not_hold(field: str, value: object) -> None:
    data = {**USAGE.__dict__, field: value}
    with pytest.raises(ValueError):
        TenantUsage(**data)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.fail = False

    async def send_all(self, sends: list[tuple[str, bytes | None, bytes | None, object]]) -> None:
        if self.fail:
            raise ConnectionError("Kafka away")
        self.sent += [(topic, value, key) for topic, value, key, _ in sends]


def sharing(now: list[float]) -> tuple[UsageSharing, QuotaBook, FakeProducer]:
    book, producer = QuotaBook(), FakeProducer()
    shared = UsageSharing(
        book, KafkaSettings(), replica="me", clock=lambda: now[0], producer=producer
    )
    return shared, book, producer


def record(replica: str, window: str, start: int, count: int) -> bytes:
    return encode_usage(TenantUsage(replica, "acme", window, start, count, DAY))


def test_others_counts_join_the_book_ours_and_ended_windows_do_not() -> None:
    now = [DAY + 100.0]
    shared, book, _ = sharing(now)
    shared.apply(b"k", record("other", "hour", DAY, 4))
    shared.apply(b"k", record("other", "hour", DAY, 6))  # its latest count replaces the last
    shared.apply(b"k", record("third", "day", DAY, 2))
    shared.apply(b"k", record("me", "hour", DAY, 50))  # ours: in the book already
    shared.apply(b"k", record("other", "hour", DAY - HOUR_S, 99))  # an hour that is over
    shared.apply(b"k", None)  # a tombstone
    shared.apply(b"k", b'{"v": 9}')  # a newer release's: skipped
    assert book.used("acme", "hour", DAY) == 6
    assert book.used("acme", "day", DAY) == 2
    assert book.used("acme", "hour", DAY - HOUR_S) == 0


async def test_only_changed_counts_are_reported_and_a_failed_report_is_sent_again() -> None:
    now = [DAY + 100.0]
    shared, book, producer = sharing(now)
    assert await shared.report() == 0
    book.charge("acme", 3, now[0])
    assert await shared.report() == 2  # the hour and the day
    sent = {key: decode_usage(value) for _, value, key in producer.sent if value}
    assert {(u.window, u.count, u.replica) for u in sent.values()} == {
        ("hour", 3, "me"),
        ("day", 3, "me"),
    }
    assert await shared.report() == 0  # nothing changed
    book.charge("acme", 1, now[0])
    producer.fail = True
    with pytest.raises(ConnectionError):
        await shared.report()
    producer.fail = False
    assert await shared.report() == 2
    now[0] = DAY + HOUR_S  # a new hour: its count is new, the day's is unchanged
    book.charge("acme", 1, now[0])
    assert {(u.window, u.count) for u in shared.pending()} == {("hour", 1), ("day", 5)}
