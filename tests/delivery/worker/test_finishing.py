"""The worker's last step before the transport: bulk mail gets List-Unsubscribe per recipient,
one transaction each, and the shaper hears every result. No Kafka (the real pipeline is in
tests/unsubscribe/test_worker_sink.py)."""

from __future__ import annotations

import email
from dataclasses import dataclass, field
from email.policy import default
from typing import Any, cast

from support.attempts import attempts_for
from support.delivery_worker import FakeTransport, Result
from support.transport import envelope

from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.consent.tokens import KeyRing
from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.worker.finishing import Finishing, wrap
from mailsluice.policy.shaping import default_policy

KEYS = KeyRing({"k1": b"s" * 32})
SETTINGS = UnsubscribeSettings(url="https://u.test", mailto_domain="u.test", keys="k1:" + "s" * 32)
MESSAGE = b"From: n@news.example\r\nSubject: hi\r\n\r\nbody\r\n"


@dataclass
class Recording(FakeTransport):
    """A fake transport that keeps each send's recipients and bytes."""

    sent: list[tuple[tuple[str, ...], bytes]] = field(default_factory=list)
    answers: dict[str, Result] = field(default_factory=dict)

    async def send(self, env: Envelope, message: bytes, *, source: str = "") -> list[Result]:
        self.sent.append((env.recipients, message))
        if env.recipients[0] in self.answers:
            return [self.answers[env.recipients[0]]]
        return await super().send(env, message, source=source)


def bulk(*rcpts: str, **kw: Any) -> Envelope:
    env = envelope(*rcpts).model_copy(
        update={"sender": "n@news.example", "tenant": "acme", "list_id": "news", **kw}
    )
    assert isinstance(env, Envelope)
    return env


@dataclass
class Charges:
    made: list[tuple[str, str, float, int]] = field(default_factory=list)

    def charge(self, key: str, source: str, now: float, count: int) -> None:
        self.made.append((key, source, now, count))


async def test_the_shaper_pays_for_every_transaction_a_split_adds() -> None:
    charges = Charges()
    finishing = Finishing(Recording(), SETTINGS, KEYS, charges, lambda: 7.0)
    env = bulk("a@b.example", "c@b.example", "d@b.example")
    await finishing.send(env, MESSAGE, source="192.0.2.1")
    assert charges.made == [(env.routing_key, "192.0.2.1", 7.0, 2)]
    await finishing.send(bulk("a@b.example"), MESSAGE, source="192.0.2.1")
    assert len(charges.made) == 1  # one recipient, one transaction: nothing more to pay


async def test_bulk_mail_goes_once_per_recipient_with_that_recipients_token() -> None:
    transport = Recording()
    finishing = Finishing(transport, SETTINGS, KEYS)
    env = bulk("a@b.example", "c@b.example", campaign="spring")
    results = await finishing.send(env, MESSAGE)
    assert [r.recipient for r in results] == ["a@b.example", "c@b.example"]
    assert [rcpts for rcpts, _ in transport.sent] == [("a@b.example",), ("c@b.example",)]
    for (rcpt,), message in transport.sent:
        parsed = email.message_from_bytes(message, policy=default)
        link, mailto = str(parsed["List-Unsubscribe"]).split(", ")
        token = link.removeprefix("<https://u.test/u/").removesuffix(">")
        assert mailto == f"<mailto:unsubscribe+{token}@u.test>"
        assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        claim = KEYS.verify(token)
        assert (claim.recipient, claim.scope, claim.campaign) == (rcpt, "list:acme/news", "spring")
        assert message.endswith(MESSAGE)


async def test_transactional_own_header_bounces_and_no_link_go_out_unchanged() -> None:
    cases = [
        (bulk("a@b.example", "c@b.example", stream="transactional"), MESSAGE, SETTINGS),
        (bulk("a@b.example", "c@b.example"), b"List-Unsubscribe: <x>\r\n" + MESSAGE, SETTINGS),
        (bulk("a@b.example", "c@b.example", sender=""), MESSAGE, SETTINGS),
        (bulk("a@b.example", "c@b.example"), MESSAGE, UnsubscribeSettings()),
    ]
    for env, message, settings in cases:
        transport = Recording()
        await Finishing(transport, settings, KEYS).send(env, message)
        assert transport.sent == [(env.recipients, message)]


async def test_transactional_mail_gets_the_fields_when_asked() -> None:
    transport = Recording()
    asked = SETTINGS.model_copy(update={"transactional": True})
    await Finishing(transport, asked, KEYS).send(
        bulk("a@b.example", stream="transactional"), MESSAGE
    )
    assert b"List-Unsubscribe-Post" in transport.sent[0][1]


async def test_a_reply_not_about_the_recipient_answers_for_the_rest_untried() -> None:
    closing = Result("a@b.example", 421, "4.7.0", "try later", phase="rcpt")
    transport = Recording(answers={"a@b.example": closing})
    results = await Finishing(transport, SETTINGS, KEYS).send(
        bulk("a@b.example", "c@b.example", "d@b.example"), MESSAGE
    )
    assert len(transport.sent) == 1
    assert [(r.recipient, r.code) for r in results] == [
        ("a@b.example", 421),
        ("c@b.example", 421),
        ("d@b.example", 421),
    ]
    # a refusal of one recipient does not stop the others
    full = Result("a@b.example", 452, "4.2.2", "mailbox full", phase="rcpt")
    transport = Recording(answers={"a@b.example": full})
    results = await Finishing(transport, SETTINGS, KEYS).send(
        bulk("a@b.example", "c@b.example"), MESSAGE
    )
    assert [r.code for r in results] == [452, 250] and len(transport.sent) == 2


async def test_the_shaper_observes_every_recipients_result() -> None:
    pool = "finishing"
    shaper = PolicyShaper(default_policy(), pool)
    seen: list[str] = []
    observe = shaper.observe

    def spy(key: str, now: float, results: Any) -> Any:
        seen.extend(r.recipient for r in results)
        return observe(key, now, results)

    shaper.observe = spy  # type: ignore[method-assign]
    attempts = attempts_for(pool, Finishing(Recording(), SETTINGS, KEYS), shaper=shaper)
    results, _held = await attempts.send(bulk("a@b.example", "c@b.example"), MESSAGE)
    assert seen == [r.recipient for r in results] == ["a@b.example", "c@b.example"]


def test_wrap_keeps_a_finishing_transport_and_wraps_from_settings_otherwise(
    monkeypatch: Any,
) -> None:
    finishing = Finishing(Recording(), SETTINGS, KEYS)
    assert wrap(cast(Any, finishing)) is finishing
    monkeypatch.setenv("MAILSLUICE_UNSUBSCRIBE_URL", "https://env.test")
    monkeypatch.setenv("MAILSLUICE_UNSUBSCRIBE_KEYS", "k9:" + "z" * 20)
    wrapped = wrap(Recording())
    assert isinstance(wrapped, Finishing) and wrapped.settings.url == "https://env.test"
