"""From a send's results to controller signals and the worker's verdict."""

from __future__ import annotations

from support.shaping import SimResult

from mailsluice.delivery.shaping.signals import classify_result, read_results
from mailsluice.policy.replies import ReplyClass, default_replies

RULES = default_replies()
TSS04 = (
    "[TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected volume or user "
    "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)
TSS09 = (
    "[TSS09] All messages from 192.0.2.10 will be permanently deferred; Retrying will NOT "
    "succeed. See https://postmaster.yahooinc.com/error-codes"
)


def result(
    rcpt: str, code: int, enhanced: str, text: str, *, phase: str = "rcpt", source: str = ""
):
    return SimResult(rcpt, code, enhanced, text, phase, source)


def test_replies_we_made_up_say_nothing_but_an_unreachable_server_is_trouble() -> None:
    ours = result("a@x", 451, "4.4.5", "No new connection allowed yet", phase="")
    assert classify_result(ours, None, RULES) is None
    refused = result("a@x", 451, "4.4.1", "Could not connect", phase="connect")
    found = classify_result(refused, None, RULES)
    assert found is not None and found.cls is ReplyClass.SERVER


def test_one_signal_per_distinct_reply_and_source_and_the_verdict() -> None:
    results = [
        result("a@yahoo.com", 421, "4.7.0", TSS04, source="192.0.2.10"),
        result("b@yahoo.com", 421, "4.7.0", TSS04, source="192.0.2.10"),
        result("c@yahoo.com", 421, "4.7.0", TSS09, source="192.0.2.10"),
        result(
            "d@yahoo.com", 550, "5.1.1", "The email account does not exist", source="192.0.2.10"
        ),
        result("e@yahoo.com", 250, "2.0.0", "ok", phase="data", source="192.0.2.10"),
    ]
    open_by_source = {"192.0.2.10": 3}
    signals, verdict = read_results(results, 7.0, "yahoo", RULES, open_by_source.__getitem__)
    classes = [(source, signal.cls) for source, signal, _rule in signals]
    assert classes == [
        ("192.0.2.10", ReplyClass.REPUTATION),  # a and b: one signal
        ("192.0.2.10", ReplyClass.BLOCK),
        ("192.0.2.10", ReplyClass.RECIPIENT),
        ("192.0.2.10", ReplyClass.SUCCESS),
    ]
    first = signals[0][1]
    assert (first.at, first.phase, first.open_connections) == (7.0, "rcpt", 3)
    assert first.reply.startswith("421 4.7.0 [TSS04]")
    assert signals[0][2] == "yahoo-ts04-deferred-volume-or-complaints"
    # deferred for the destination's limits: they wait for capacity; TSS09 never succeeds
    assert verdict.held == {"a@yahoo.com", "b@yahoo.com"}
    assert verdict.bounce == {"c@yahoo.com"}


def test_a_permanent_reply_is_never_held() -> None:
    blocked = (
        "Unfortunately, messages from [192.0.2.10] weren't sent. Please contact your Internet "
        "service provider since part of their network is on our block list (S3150)."
    )
    results = [result("a@outlook.com", 550, "5.7.1", blocked)]
    signals, verdict = read_results(results, 0.0, "microsoft", RULES, lambda _s: 1)
    assert [s.cls for _src, s, _r in signals] == [ReplyClass.BLOCK]
    assert verdict.held == frozenset() and verdict.bounce == frozenset()
