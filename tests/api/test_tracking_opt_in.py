"""Tracking asked for over the API: the request's `tracking` (for its messages, and so their
campaign), else the tenant's default, else "" (the pool decides at delivery); a value outside
off, opens, clicks, all is a problem naming the field."""

from __future__ import annotations

from support.api import BETA_KEY, Served, message

from mailsluice.contracts.envelope import envelope_from_headers


def trackings(served: Served) -> list[str]:
    records = served.written.queue_records()
    served.written.publishes.clear()
    return [envelope_from_headers(r[3]).tracking for r in records]


async def test_the_request_else_the_tenant_else_the_pool_decides(served: Served) -> None:
    beta = {**message(2), "from": {"email": "hi@beta.test"}}
    cases = [
        (message(2), None, ["", ""]),  # acme has no default: the pool's
        (message(2, tracking="clicks"), None, ["clicks", "clicks"]),
        (beta, BETA_KEY, ["opens", "opens"]),  # beta's default
        ({**beta, "tracking": "off"}, BETA_KEY, ["off", "off"]),  # the request wins
        ({**beta, "tracking": "all", "campaign": "spring"}, BETA_KEY, ["all", "all"]),
    ]
    for body, key, expected in cases:
        status, answer, _ = await served.post(body, **({"key": key} if key else {}))
        assert status == 202, answer
        assert trackings(served) == expected, body


async def test_an_unknown_tracking_value_is_a_problem(served: Served) -> None:
    status, problem, _ = await served.post(message(tracking="sometimes"))
    assert status == 422
    assert "tracking" in [e["field"] for e in problem["errors"]]
    assert served.written.publishes == []
