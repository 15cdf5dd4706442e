"""From a send's per-recipient results to controller signals and a verdict for the worker.

One send yields a result per recipient, often the same reply for all of them; the controller
hears each distinct reply of each source once, since it meters messages, not recipients. Only
replies a remote server gave are classified by the reply rules: a reply we made up ourselves
(no route, our own connection rate, TLS we required) says nothing about the destination,
except that it could not be reached at all, which is server trouble.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast, get_args

from mailsluice.delivery.shaping.controller import Signal
from mailsluice.policy.replies import Classified, Phase, ReplyClass, ReplyRule, classify

# Transient classes about the destination rather than the message: such a recipient waits for
# capacity (no attempt counted, no failure schedule) instead of retrying in minutes.
HOLDING = frozenset(
    {
        ReplyClass.RATE,
        ReplyClass.REPUTATION,
        ReplyClass.CONNECTIONS,
        ReplyClass.PER_CONNECTION,
        ReplyClass.BLOCK,
    }
)


PHASES = frozenset(get_args(Phase))


class ResultView(Protocol):
    """What shaping reads of a transport result (transport.client.RecipientResult)."""

    @property
    def recipient(self) -> str: ...
    @property
    def code(self) -> int: ...
    @property
    def enhanced(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def phase(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def sent_on_connection(self) -> int: ...


@dataclass(frozen=True)
class Verdict:
    bounce: frozenset[str] = frozenset()  # transient replies that will never succeed
    held: frozenset[str] = frozenset()  # deferred by the destination's limits: wait for capacity


def classify_result(
    res: ResultView, provider: str | None, rules: Sequence[ReplyRule]
) -> Classified | None:
    """The class of one result; None for a reply we made up that says nothing about the
    destination."""
    if res.phase == "connect":
        return Classified(ReplyClass.SERVER, "connect")
    if res.phase not in PHASES:
        return None
    phase = cast(Phase, res.phase)
    return classify(res.code, res.enhanced, res.text, phase=phase, provider=provider, rules=rules)


def read_results(
    results: Sequence[ResultView],
    now: float,
    provider: str | None,
    rules: Sequence[ReplyRule],
    open_connections: Callable[[str], int],
) -> tuple[list[tuple[str, Signal, str]], Verdict]:
    """(source, signal, rule) per distinct reply, and the verdict on the recipients;
    `open_connections(source)`: sends under way from that source to the destination."""
    seen: set[tuple[str, int, str, str, str]] = set()
    signals: list[tuple[str, Signal, str]] = []
    bounce: set[str] = set()
    held: set[str] = set()
    for res in results:
        found = classify_result(res, provider, rules)
        if found is None:
            continue
        transient = 400 <= res.code < 500
        if transient and found.bounce:
            bounce.add(res.recipient)
        elif transient and found.cls in HOLDING:
            held.add(res.recipient)
        mark = (res.source, res.code, res.enhanced, res.text, res.phase)
        if mark in seen:
            continue
        seen.add(mark)
        reply = f"{res.code} {res.enhanced} {res.text}".strip()
        signal = Signal(
            found.cls,
            now,
            phase=res.phase,
            reply=reply[:500],
            open_connections=open_connections(res.source),
            sent_on_connection=res.sent_on_connection,
        )
        signals.append((res.source, signal, found.rule))
    return signals, Verdict(frozenset(bounce), frozenset(held))
