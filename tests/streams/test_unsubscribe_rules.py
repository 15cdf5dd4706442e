"""An unsubscribe event suppresses its recipient in the scope it names, and only there."""

from __future__ import annotations

from mailsluice.contracts.events import Event, EventType
from mailsluice.streams import rules
from mailsluice.streams.rules import Policy, SoftState, decide

POLICY = Policy()


def unsubscribe(scope: str) -> Event:
    return Event(type=EventType.UNSUBSCRIBE, recipient="r@x.example", scope=scope)


def test_an_unsubscribe_suppresses_in_its_scope_and_keeps_the_soft_days() -> None:
    state = SoftState((1, 2))
    for label in ("list:acme/news", "tenant:acme", "domain:acme.example", "global"):
        decision = decide(unsubscribe(label), state, POLICY)
        assert (decision.suppress, decision.scope, decision.changed) == (
            rules.UNSUBSCRIBE,
            label,
            False,
        )
    assert rules.relevant(unsubscribe("global"))


def test_a_label_that_names_no_scope_suppresses_nothing() -> None:
    for label in ("", "list:acme", "everything"):
        assert decide(unsubscribe(label), None, POLICY) == rules.KEEP


def test_other_suppressions_stay_global() -> None:
    complaint = Event(type=EventType.COMPLAINT, recipient="r@x.example", scope="list:a/b")
    assert decide(complaint, None, POLICY).scope == "global"
