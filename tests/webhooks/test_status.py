"""Endpoint statuses on a simulated clock: failing after a failure, paused after failing for
the pause time or at a 410, active again after a success or an admin's resume; records are
written at changes and refreshed at most every refresh_s."""

from __future__ import annotations

from mailsluice.contracts.webhook_records import EndpointState, encode_status
from mailsluice.webhooks.status import EndpointBook, admin_status


def test_failures_make_an_endpoint_failing_then_paused_after_the_pause_time() -> None:
    book = EndpointBook(pause_after_s=100, refresh_s=30)
    first = book.failed("acme", "main", "HTTP 503", now=1000)
    assert first is not None and first.state is EndpointState.FAILING
    assert (first.failing_since, first.consecutive_failures) == (1000, 1)
    assert book.failed("acme", "main", "HTTP 503", now=1010) is None  # within refresh_s
    again = book.failed("acme", "main", "timeout", now=1040)
    assert again is not None and again.consecutive_failures == 3 and again.last_error == "timeout"
    assert not book.paused("acme", "main")
    paused = book.failed("acme", "main", "HTTP 503", now=1100)
    assert paused is not None and paused.state is EndpointState.PAUSED and paused.since == 1100
    assert book.paused("acme", "main") and book.paused_count() == 1
    assert not book.paused("acme", "other") and not book.paused("other", "main")


def test_a_success_resets_the_failure_time() -> None:
    book = EndpointBook(pause_after_s=100)
    book.failed("acme", "main", "HTTP 500", now=1000)
    ok = book.succeeded("acme", "main", now=1090)
    assert ok is not None and ok.state is EndpointState.ACTIVE and ok.failing_since == 0
    assert book.succeeded("acme", "main", now=1091) is None  # nothing new to say
    failing = book.failed("acme", "main", "HTTP 500", now=1150)
    assert failing is not None and failing.state is EndpointState.FAILING  # 60 s, not 150


def test_410_gone_pauses_at_once() -> None:
    book = EndpointBook(pause_after_s=1e9)
    status = book.failed("acme", "main", "HTTP 410", now=5, gone=True)
    assert status is not None and status.state is EndpointState.PAUSED


def test_the_book_follows_the_topic_and_an_admin_resume_wins_over_older_records() -> None:
    book = EndpointBook(pause_after_s=10)
    book.failed("acme", "main", "HTTP 500", now=1000)
    paused = book.failed("acme", "main", "HTTP 500", now=1020)
    assert paused is not None and book.paused("acme", "main")
    resumed = admin_status(paused, EndpointState.ACTIVE, now=1030)
    book.apply(resumed.key, encode_status(resumed))
    assert not book.paused("acme", "main")
    assert book.get("acme", "main").consecutive_failures == 0
    book.apply(paused.key, encode_status(paused))  # our own older record coming back
    assert not book.paused("acme", "main")
    book.apply(paused.key, None)  # a tombstone forgets it
    assert book.get("acme", "main").state is EndpointState.ACTIVE
    book.apply(paused.key, b"not json")  # ignored
