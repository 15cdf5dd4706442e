"""POST /v1/messages over real HTTP, Kafka replaced by a list (conftest.py): authentication,
validation problems naming the field and recipient index, owned domains, suppressed and
unrenderable recipients among accepted ones, quotas, Kafka failures, body size."""

from __future__ import annotations

import asyncio
import base64
import email
from collections.abc import AsyncIterator
from email import policy
from typing import Any

from support.api import BETA_KEY, SMALL_KEY, Served, app_settings, auth, message, serve

from mailsluice.contracts.envelope import envelope_from_headers
from mailsluice.contracts.events import EventType, decode_event
from mailsluice.contracts.suppressions import Suppression


def problem_fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body["errors"]]


async def test_accepted_recipients_are_answered_with_their_queue_ids(served: Served) -> None:
    status, body, _ = await served.post(message(3, campaign="c1", tags=["a", "b"]))
    assert status == 202, body
    assert body["accepted"] == 3
    assert [(r["index"], r["to"], r["status"]) for r in body["results"]] == [
        (i, f"user{i}@example.com", "accepted") for i in range(3)
    ]
    records = served.written.queue_records()
    assert [envelope_from_headers(r[3]).queue_id for r in records] == [
        r["id"] for r in body["results"]
    ]
    for i, (_, value, _, headers) in enumerate(records):
        env = envelope_from_headers(headers)
        assert (env.tenant, env.campaign, env.tags, env.user) == (
            "acme",
            "c1",
            ("a", "b"),
            "api:acme",
        )
        msg = email.message_from_bytes(value or b"", policy=policy.default)
        assert msg["Subject"] == f"Hello U{i}"
        assert msg.get_content().strip() == f"Dear U{i}, your code is {i}."
    (sends,) = served.written.publishes
    events = [decode_event(v or b"") for t, v, _, _ in sends if t == "mailsluice.events"]
    assert [(e.type, e.tenant, e.campaign) for e in events] == [
        (EventType.RECEPTION, "acme", "c1")
    ] * 3


async def test_no_key_or_a_bad_key_is_401(served: Served) -> None:
    async with served.http.post(f"{served.url}/v1/messages", json=message()) as resp:
        assert resp.status == 401
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for key in ("nonsense", "ms_acmekey1_" + "Z" * 43):
        status, body, _ = await served.post(message(), key=key)
        assert (status, body["title"]) == (401, "Unauthorised")
    assert served.written.publishes == []


async def test_tenant_a_cannot_send_as_tenant_b(served: Served) -> None:
    status, body, _ = await served.post(message(), key=BETA_KEY)  # from news@acme.test
    assert status == 403, body
    assert "acme.test" in body["detail"]
    own = {**message(), "from": {"email": "hi@beta.test"}}
    assert (await served.post(own, key=BETA_KEY))[0] == 202
    sub = {**message(), "from": {"email": "x@mail.acme.test"}}  # *.acme.test is acme's
    assert (await served.post(sub))[0] == 202
    assert (await served.post(sub, key=BETA_KEY))[0] == 403
    assert len(served.written.publishes) == 2


async def test_validation_problems_name_the_field_and_recipient_index(served: Served) -> None:
    body = message(20)
    body["recipients"][17]["to"]["email"] = "not-an-address"
    body["recipients"][3]["to"]["email"] = "a@b@c.example"
    body["headers"] = {"Subject": "again"}
    body["tags"] = ["a,b"]
    status, problem, headers = await served.post(body)
    assert status == 422
    assert headers["Content-Type"] == "application/problem+json"
    assert set(problem_fields(problem)) == {
        "recipients[17].to.email",
        "recipients[3].to.email",
        "headers",
        "tags",
    }
    assert problem["status"] == 422 and problem["type"] == "about:blank"
    assert served.written.publishes == []


async def test_structural_headers_and_line_breaks_are_refused(served: Served) -> None:
    for name, value in [
        ("From", "x@acme.test"),
        ("Content-Type", "text/html"),
        ("X-Mailsluice-Pool", "other"),
        ("DKIM-Signature", "v=1"),
        ("Received", "from x"),
        ("X-Fine", "a\r\nBcc: victim@example.com"),
    ]:
        status, problem, _ = await served.post(message(headers={name: value}))
        assert (status, problem_fields(problem)) == (422, ["headers"]), (name, problem)


async def test_request_shape_problems(served: Served) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({**message(), "text": None}, ""),  # neither text nor html
        ({**message(), "extra": 1}, "extra"),
        ({**message(), "stream": "fast"}, "stream"),
        ({**message(), "recipients": []}, "recipients"),
        (message(1001), "recipients"),
        ({**message(), "campaign": "-bad"}, "campaign"),
        ({**message(), "pool": "bulk"}, ""),  # acme's pool: fine (checked below)
        (
            {**message(), "attachments": [{"filename": "a", "content": "!!"}]},
            "attachments[0].content",
        ),
    ]
    for body, field in cases:
        status, problem, _ = await served.post(body)
        if body.get("pool") == "bulk":
            assert status == 202
            continue
        assert status == 422, (field, problem)
        assert field in problem_fields(problem), (field, problem)


async def test_tenant_limits_are_checked_per_field(served: Served) -> None:
    body = message(5, pool="transactional-only")
    body["recipients"][3]["data"] = {"blob": "x" * 20_000}
    status, problem, _ = await served.post(body)
    assert status == 422
    assert problem_fields(problem) == ["pool", "recipients[3].data"]


async def test_a_recipient_whose_rendering_fails_is_rejected_and_the_others_go_on(
    served: Served,
) -> None:
    body = message(3)
    del body["recipients"][1]["data"]["first"]
    status, answer, _ = await served.post(body)
    assert status == 202, answer
    statuses = [(r["status"], r["reason"]) for r in answer["results"]]
    assert statuses[0] == ("accepted", "") and statuses[2] == ("accepted", "")
    assert statuses[1] == ("rejected", "render: subject: 'first' is undefined")
    assert answer["accepted"] == 2
    assert len(served.written.queue_records()) == 2
    events = [decode_event(v or b"") for t, v, _, _ in served.written.publishes[0] if "events" in t]
    (rejection,) = [e for e in events if e.type == EventType.REJECTION]
    assert rejection.recipient == "user1@example.com"
    assert rejection.queue_id == answer["results"][1]["id"]


async def test_a_suppressed_recipient_is_reported_with_its_scope(served: Served) -> None:
    served.written.suppressed[("tenant:acme", "user1@example.com")] = Suppression(
        address="user1@example.com", reason="bounce", scope="tenant:acme"
    )
    status, answer, _ = await served.post(message(3))
    assert status == 202
    assert [(r["status"], r["reason"]) for r in answer["results"]] == [
        ("accepted", ""),
        ("suppressed", "tenant:acme"),
        ("accepted", ""),
    ]
    assert {envelope_from_headers(r[3]).recipients for r in served.written.queue_records()} == {
        ("user0@example.com",),
        ("user2@example.com",),
    }
    events = [decode_event(v or b"") for t, v, _, _ in served.written.publishes[0] if "events" in t]
    (suppressed,) = [e for e in events if e.type == EventType.SUPPRESSED]
    assert (suppressed.recipient, suppressed.reason, suppressed.tenant) == (
        "user1@example.com",
        "tenant:acme",
        "acme",
    )


async def test_over_quota_is_429_with_retry_after_and_sends_nothing(served: Served) -> None:
    small = {**message(6), "from": {"email": "a@small.test"}}  # quota: 5 an hour
    status, problem, headers = await served.post(small, key=SMALL_KEY)
    assert status == 429, problem
    assert 1 <= int(headers["Retry-After"]) <= 3600
    assert served.written.publishes == []
    four = {**message(4), "from": {"email": "a@small.test"}}
    assert (await served.post(four, key=SMALL_KEY))[0] == 202
    two = {**message(2), "from": {"email": "a@small.test"}}
    assert (await served.post(two, key=SMALL_KEY))[0] == 429
    one = {**message(1), "from": {"email": "a@small.test"}}
    assert (await served.post(one, key=SMALL_KEY))[0] == 202
    assert (await served.post(one, key=SMALL_KEY))[0] == 429


async def test_kafka_not_acknowledging_is_503_with_retry_after(served: Served) -> None:
    served.written.fail = True
    status, problem, headers = await served.post(message(2))
    assert status == 503, problem
    assert int(headers["Retry-After"]) > 0


async def test_attachments_are_decoded_and_bounded() -> None:
    async with serve(app_settings(max_attachment_bytes=1000)) as served:
        content = base64.b64encode(b"\x00" * 600).decode()
        one = {"filename": "a.bin", "content": content}
        status, answer, _ = await served.post(message(attachments=[one]))
        assert status == 202, answer
        status, problem, _ = await served.post(message(attachments=[one, one]))
        assert (status, problem_fields(problem)) == (422, ["attachments"])


async def test_a_body_over_the_limit_is_413() -> None:
    async with serve(app_settings(max_body_bytes=64 * 1024)) as served:
        body = message(1, text="x" * 70_000)
        status, problem, _ = await served.post(body)
        assert (status, problem["title"]) == (413, "Body too large")


async def test_a_chunked_body_over_the_limit_is_413_too() -> None:
    async with serve(app_settings(max_body_bytes=64 * 1024)) as served:

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"from": {"email": "news@acme.test"}, "text": "'
            for _ in range(100):
                yield b"x" * 1024  # no Content-Length: counted as it comes
            yield b'", "recipients": [{"to": {"email": "a@example.com"}}]}'

        url = f"{served.url}/v1/messages"
        headers = {**auth(), "Content-Type": "application/json"}
        async with served.http.post(url, data=chunks(), headers=headers) as resp:
            assert resp.status == 413
            assert (await resp.json(content_type=None))["title"] == "Body too large"
        assert served.written.publishes == []


async def test_recipients_waiting_for_their_acks_count_against_the_quota(served: Served) -> None:
    def small(count: int) -> dict[str, Any]:
        return {**message(count), "from": {"email": "a@small.test"}}  # quota: 5 an hour

    served.written.hold = asyncio.Event()
    first = asyncio.create_task(served.post(small(4), key=SMALL_KEY))
    await served.written.held.wait()  # four admitted, not yet acknowledged
    assert (await served.post(small(2), key=SMALL_KEY))[0] == 429
    served.written.hold.set()
    assert (await first)[0] == 202
    assert (await served.post(small(1), key=SMALL_KEY))[0] == 202
    assert (await served.post(small(1), key=SMALL_KEY))[0] == 429
