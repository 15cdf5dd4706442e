"""Idempotency keys: the book's logic, and over HTTP a retried POST that gets the first answer
and sends nothing, another body under the same key, a request still in flight."""

from __future__ import annotations

import asyncio
import json

import pytest
from support.api import Served, message

from mailsluice.api.idempotency import IdempotencyBook, fingerprint
from mailsluice.api.problems import Problem
from mailsluice.contracts.idempotency import IdempotentAnswer, answer_key, encode_answer


async def test_the_book_keeps_the_first_answer_per_tenant_and_key() -> None:
    written: list[tuple[bytes, bytes]] = []

    async def write(key: bytes, value: bytes) -> None:
        written.append((key, value))

    book = IdempotencyBook(write)
    assert book.begin("acme", "k", "print-1") is None
    with pytest.raises(Problem) as in_flight:
        book.begin("acme", "k", "print-1")
    assert in_flight.value.status == 409
    assert book.begin("beta", "k", "print-1") is None  # another tenant's key is another key
    await book.keep("acme", "k", "print-1", 202, {"accepted": 1})
    book.end("acme", "k")
    stored = book.begin("acme", "k", "print-1")
    assert stored is not None and (stored.status, stored.body) == (202, {"accepted": 1})
    with pytest.raises(Problem) as reused:
        book.begin("acme", "k", "print-2")
    assert reused.value.status == 422
    ((key, value),) = written
    assert key == answer_key("acme", "k") == b"acme|k"
    assert json.loads(value)["fingerprint"] == "print-1"


def test_a_replica_learns_answers_from_the_topic_and_forgets_on_a_tombstone() -> None:
    book = IdempotencyBook()
    answer = IdempotentAnswer(tenant="acme", key="k|x", fingerprint="p", status=202, body={})
    book.apply(answer_key("acme", "k|x"), encode_answer(answer))
    assert book.begin("acme", "k|x", "p") == answer
    book.apply(answer_key("acme", "k|x"), None)
    assert book.begin("acme", "k|x", "p") is None
    newer = json.dumps({**answer.model_dump(), "v": 99}).encode()
    book.apply(b"acme|n", newer)  # written by a newer release: not misread
    assert len(book) == 0


def test_the_fingerprint_ignores_key_order_but_not_content() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


async def test_a_retried_post_gets_the_same_answer_and_sends_nothing(served: Served) -> None:
    first = await served.post(message(3), **{"Idempotency-Key": "order-17"})
    again = await served.post(message(3), **{"Idempotency-Key": "order-17"})
    assert first[0] == again[0] == 202
    assert first[1] == again[1]  # the same queue ids
    assert again[2]["Idempotent-Replayed"] == "true"
    assert len(served.written.publishes) == 1
    assert len(served.written.kept) == 1
    # without a key, every POST is new
    await served.post(message(3))
    await served.post(message(3))
    assert len(served.written.publishes) == 3


async def test_the_same_key_with_another_body_is_422(served: Served) -> None:
    assert (await served.post(message(1), **{"Idempotency-Key": "k1"}))[0] == 202
    status, problem, _ = await served.post(message(2), **{"Idempotency-Key": "k1"})
    assert (status, problem["title"]) == (422, "Idempotency-Key reused")
    assert len(served.written.publishes) == 1


async def test_a_key_in_flight_is_409(served: Served) -> None:
    served.written.hold = asyncio.Event()
    first = asyncio.create_task(served.post(message(1), **{"Idempotency-Key": "k2"}))
    await served.written.held.wait()  # the first is waiting for Kafka when the second comes
    status, problem, headers = await served.post(message(1), **{"Idempotency-Key": "k2"})
    assert (status, problem["title"]) == (409, "Request in progress")
    assert headers["Retry-After"] == "1"
    served.written.hold.set()
    assert (await first)[0] == 202
    assert len(served.written.publishes) == 1


async def test_a_failed_send_is_not_kept_so_a_retry_sends(served: Served) -> None:
    served.written.fail = True
    assert (await served.post(message(1), **{"Idempotency-Key": "k3"}))[0] == 503
    served.written.fail = False
    assert (await served.post(message(1), **{"Idempotency-Key": "k3"}))[0] == 202
    assert len(served.written.publishes) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9"])
async def test_a_malformed_key_is_400(served: Served, key: str) -> None:
    status, problem, _ = await served.post(message(1), **{"Idempotency-Key": key})
    assert status == 400, problem
