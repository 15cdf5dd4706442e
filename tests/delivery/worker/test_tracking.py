"""Tracking at delivery: each recipient's copy rewritten with its own tokens (HTML links and a
pixel; text parts and unsubscribe links as they were), then its List-Unsubscribe fields; which
messages track what. A fake transport; the sink test is tests/delivery/test_tracking_sink.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from support.delivery_worker import FakeTransport, Result
from support.tracked_mail import (
    TARGETS,
    TRACKER,
    UNSUBSCRIBE,
    UNSUBSCRIBE_LINK,
    alternative_qp,
    clicks,
    html_of,
    opens,
    parsed,
    related_base64,
    text_of,
)
from support.transport import envelope

from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.consent.tokens import KeyRing
from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.worker import finishing
from mailsluice.delivery.worker.finishing import Finishing, Setup, load_setup, wrap
from mailsluice.delivery.worker.tracking import Tracking
from mailsluice.metrics.delivery import TRACKING as TRACKED
from mailsluice.metrics.delivery import TRACKING_OUTCOMES
from mailsluice.tracking.rewrite import Plan, Unchanged, plan
from mailsluice.tracking.settings import TrackingSettings
from mailsluice.tracking.tokens import TrackingKeys

NOW = 1_796_000_000
KEYS = TrackingKeys({"t1": b"t" * 32})
UNSUB_KEYS = KeyRing({"k1": b"s" * 32})
UNSUB = UnsubscribeSettings(url=UNSUBSCRIBE, keys="k1:" + "s" * 32)
ALL = TrackingSettings(url=TRACKER, keys="t1:" + "t" * 32, default="all")


@dataclass
class Recording(FakeTransport):
    sent: list[tuple[tuple[str, ...], bytes]] = field(default_factory=list)

    async def send(self, env: Envelope, message: bytes, *, source: str = "") -> list[Result]:
        self.sent.append((env.recipients, message))
        return await super().send(env, message, source=source)


def tracking(settings: TrackingSettings = ALL, keys: TrackingKeys = KEYS) -> Tracking:
    return Tracking(settings, keys, UNSUBSCRIBE, wall=lambda: NOW + 0.7)


def bulk(*rcpts: str, **kw: Any) -> Envelope:
    env = envelope(*rcpts, sender="news@origin.example").model_copy(
        update={"tenant": "acme", "campaign": "spring", "routing_key": "dest.example", **kw}
    )
    assert isinstance(env, Envelope)
    return env


async def sent(
    env: Envelope,
    message: bytes,
    how: Tracking | None,
    unsub: UnsubscribeSettings = UNSUB,
) -> list[tuple[tuple[str, ...], bytes]]:
    transport = Recording()
    await Finishing(transport, unsub, UNSUB_KEYS, tracking=how).send(env, message)
    return transport.sent


@pytest.mark.parametrize("build", [alternative_qp, related_base64], ids=["qp-latin1", "base64"])
async def test_each_recipient_gets_their_own_tokens_for_each_html_link(build: Any) -> None:
    message = build()
    env = bulk("ann@dest.example", "bob@dest.example")
    copies = await sent(env, message, tracking())
    assert [rcpts for rcpts, _ in copies] == [("ann@dest.example",), ("bob@dest.example",)]
    seen: set[str] = set()
    for (rcpt,), copy in copies:
        html = html_of(copy)
        marks = clicks(KEYS, html)
        assert [(m.link, m.target) for m in marks] == list(enumerate(TARGETS))
        (pixel,) = opens(KEYS, html)
        for mark in [*marks, pixel]:
            assert (mark.recipient, mark.queue_id, mark.sent) == (rcpt, env.queue_id, NOW)
            assert (mark.pool, mark.routing_key) == (env.pool, "dest.example")
            assert (mark.tenant, mark.campaign) == ("acme", "spring")
        assert f'href="{UNSUBSCRIBE_LINK}"' in html  # never redirected
        assert "Grüße" in html and text_of(copy) == text_of(message)  # text part as it was
        assert html.count(TRACKER) == 3
        seen.add(html)
    assert len(seen) == 2  # tokens differ between recipients


async def test_the_fields_come_after_the_rewrite_and_name_the_same_recipient() -> None:
    message = alternative_qp()
    ((rcpts, copy),) = await sent(bulk("ann@dest.example"), message, tracking())
    header, _, rest = copy.partition(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
    assert header.startswith(b"List-Unsubscribe: <https://unsub.test/u/") and rest
    assert (
        UNSUB_KEYS.verify(header.split(b"/u/")[1].split(b">")[0].decode()).recipient == (rcpts[0])
    )
    assert rest != message and clicks(KEYS, html_of(rest))  # the tracked message


async def test_opens_only_adds_a_pixel_and_clicks_only_redirects_links() -> None:
    env = bulk("ann@dest.example")
    ((_, copy),) = await sent(
        env.model_copy(update={"tracking": "opens"}), related_base64(), tracking()
    )
    html = html_of(copy)
    assert not clicks(KEYS, html) and len(opens(KEYS, html)) == 1
    assert all(f'"{t.replace("&", "&amp;")}"' in html for t in TARGETS)
    ((_, copy),) = await sent(
        env.model_copy(update={"tracking": "clicks"}), related_base64(), tracking()
    )
    html = html_of(copy)
    assert len(clicks(KEYS, html)) == 2 and not opens(KEYS, html)


def choice(env: Envelope, settings: TrackingSettings = ALL, keys: TrackingKeys = KEYS) -> str:
    return tracking(settings, keys).choice(env)


def test_what_a_message_tracks() -> None:
    env = bulk("ann@dest.example")
    opens_pool = ALL.model_copy(update={"default": "opens"})
    assert choice(env) == "all" and choice(env, opens_pool) == "opens"  # the pool's default
    assert choice(env.model_copy(update={"tracking": "off"})) == "off"  # asked: none
    assert choice(env.model_copy(update={"tracking": "clicks"}), opens_pool) == "clicks"
    assert choice(env.model_copy(update={"tracking": "later"}), opens_pool) == "opens"  # unknown
    assert choice(env.model_copy(update={"sender": ""})) == "off"  # a bounce, never
    assert choice(env, ALL.model_copy(update={"url": ""})) == "off"  # no tracker
    assert choice(env, keys=TrackingKeys({})) == "off"  # no keys
    receipt = env.model_copy(update={"stream": "transactional"})
    asked = receipt.model_copy(update={"tracking": "opens"})
    with_transactional = ALL.model_copy(update={"transactional": True})
    assert choice(receipt) == choice(asked) == "off"
    assert choice(receipt, with_transactional) == "off"  # the pool's default is not asking
    assert choice(asked, with_transactional) == "opens"


async def test_untracked_messages_without_fields_go_out_once_unchanged() -> None:
    message = alternative_qp()
    env = bulk("ann@dest.example", "bob@dest.example", tracking="off")
    assert await sent(env, message, tracking(), UnsubscribeSettings()) == [
        (env.recipients, message)
    ]
    assert await sent(env, message, None, UnsubscribeSettings()) == [(env.recipients, message)]
    # tracking alone splits too: the tokens name one recipient
    on = env.model_copy(update={"tracking": "all"})
    copies = await sent(on, message, tracking(), UnsubscribeSettings())
    assert [r for r, _ in copies] == [("ann@dest.example",), ("bob@dest.example",)]
    assert all(not c.startswith(b"List-Unsubscribe") for _, c in copies)


async def test_a_message_is_read_once_for_all_its_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    planned: list[bytes] = []

    def counted(message: bytes) -> Plan:
        planned.append(message)
        return plan(message)

    monkeypatch.setattr(finishing, "plan", counted)
    message = related_base64()
    rcpts = ("ann@dest.example", "bob@dest.example", "cy@dest.example")
    copies = await sent(bulk(*rcpts), message, tracking())
    assert planned == [message]
    how = tracking()
    for (rcpt,), copy in copies:  # each the copy its recipient would get alone
        assert copy.endswith(how.copy(bulk(rcpt), rcpt, plan(message), "all"))


async def test_copies_are_counted_by_outcome() -> None:
    def count(outcome: str) -> float:
        return TRACKED.labels(outcome)._value.get()  # type: ignore[attr-defined,no-any-return]

    before = {o: count(o) for o in ("tracked", "no_html")}
    plain = b"From: news@origin.example\r\nSubject: hi\r\n\r\nhttps://shop.test/\r\n"
    copies = await sent(bulk("ann@dest.example", "bob@dest.example"), plain, tracking())
    assert [c.endswith(plain) for _, c in copies] == [True, True]
    await sent(bulk("cy@dest.example"), alternative_qp(), tracking())
    assert count("no_html") - before["no_html"] == 2
    assert count("tracked") - before["tracked"] == 1


def test_the_metric_names_every_reason_a_rewrite_gives() -> None:
    assert ("tracked", *(u.value for u in Unchanged)) == TRACKING_OUTCOMES


async def test_wrap_takes_the_setup_the_service_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finishing, "load_setup", lambda: pytest.fail("read the environment"))
    wrapped = wrap(Recording(), setup=Setup(UNSUB, UNSUB_KEYS, tracking()))
    assert isinstance(wrapped, Finishing) and wrapped.tracking is not None
    assert wrapped.settings is UNSUB


def test_load_setup_reads_tracking_and_refuses_a_url_without_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILSLUICE_TRACKING_URL", "https://env.test")
    monkeypatch.setenv("MAILSLUICE_TRACKING_KEYS", "t9:" + "z" * 20)
    monkeypatch.setenv("MAILSLUICE_UNSUBSCRIBE_URL", "https://unsub.test")
    setup = load_setup()
    assert setup.tracking is not None and setup.tracking.settings.url == "https://env.test"
    assert setup.tracking.keep(UNSUBSCRIBE_LINK) and not setup.tracking.keep(TARGETS[1])
    monkeypatch.delenv("MAILSLUICE_TRACKING_KEYS")
    with pytest.raises(SystemExit) as exited:
        load_setup()
    assert exited.value.code == 2
    monkeypatch.delenv("MAILSLUICE_TRACKING_URL")
    assert load_setup().tracking is None


async def test_copies_keep_the_mime_tree_and_charsets() -> None:
    for build in (alternative_qp, related_base64):
        ((_, copy),) = await sent(
            bulk("ann@dest.example"), build(), tracking(), UnsubscribeSettings()
        )
        assert copy != build()
        assert shape(copy) == shape(build())


def shape(data: bytes) -> list[tuple[str, str | None, str | None]]:
    return [
        (p.get_content_type(), p.get_boundary(), p.get_content_charset())
        for p in parsed(data).walk()
    ]


async def test_a_link_too_long_for_a_token_stays_as_it_was() -> None:
    long_target = "https://shop.example/" + "a" * 2100
    html = f'<p><a href="{long_target}">long</a> <a href="https://shop.example/ok">ok</a></p>'
    message = (
        "From: news@origin.example\r\nTo: ann@dest.example\r\nSubject: s\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n{html}\r\n"
    ).encode()
    ((_, copy),) = await sent(bulk("ann@dest.example"), message, tracking())
    assert f'href="{long_target}"' in html_of(copy)
    assert [m.target for m in clicks(KEYS, html_of(copy))] == ["https://shop.example/ok"]
