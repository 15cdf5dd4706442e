"""Shaping settings, and the runtime's Kafka loops against the real broker: operator commands
reach the worker, status is published, warm-up usage survives a restart."""

from __future__ import annotations

import json
import time

import pytest
from support.eventually import eventually
from support.shaping import SimResult
from support.topic_reader import read_topic

from mailsluice.admin import destinations as cli
from mailsluice.admin import warmup as warmup_cli
from mailsluice.config import ConfigError, load
from mailsluice.contracts.control import Command, decode_learned, learned_key
from mailsluice.contracts.events import EventType, decode_event
from mailsluice.contracts.topics import CONTROL_TOPIC, EVENTS_TOPIC
from mailsluice.delivery.shaping.controller_types import Change
from mailsluice.delivery.shaping.runtime import ShapingRuntime
from mailsluice.delivery.shaping.settings import ShapingSettings, build_shaper
from mailsluice.delivery.shaping.status import StatusSoon
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.settings import KafkaSettings


async def test_each_source_address_keeps_its_warmup_usage_over_a_restart(kafka):
    """Two addresses, one warm: the cold one's usage goes to the ledger under its own key and
    comes back to it alone; the warm one has no tracker and no records."""
    cold, warm = "192.0.2.10", "192.0.2.11"
    overrides = {
        "warmup": {
            "schedule": "custom",
            "start": "2026-01-01",
            "table": {"1": 1000},
            "sources": {warm: "warm"},
        }
    }
    settings = ShapingSettings(worker_id="w-src", pool_overrides=json.dumps(overrides))
    kafka_settings = kafka.settings()
    runtime = ShapingRuntime(settings, kafka_settings, "t-src", sources=(cold, warm))
    await runtime.start()
    try:
        warmup = runtime.shaper.warmup
        assert warmup is not None and list(warmup.trackers) == [cold]
        for source in (cold, cold, cold, warm):
            assert warmup.try_take(source, None, time.time()).action == "allow"
    finally:
        await runtime.stop()
    again = ShapingRuntime(settings, kafka_settings, "t-src", sources=(cold, warm))
    await again.start()
    try:
        assert again.shaper.warmup is not None
        (status,) = again.shaper.warmup.status(time.time())
        assert (status.source, status.scopes["*"].used) == (cold, 3)
    finally:
        await again.stop()
    records = await warmup_cli.read_ledger(kafka_settings)
    sources = {k.decode().split("/")[1] for k, _v in records if k and k.startswith(b"t-src/")}
    assert sources == {cold}


def test_settings_defaults_use_shipped_files():
    settings = ShapingSettings()
    shaper = build_shaper(settings, "default", time.time)
    assert shaper.shaping("google").connection_limit == 5
    assert shaper.warmup is None
    assert len(shaper.rules) > 30  # the shipped reply rules
    assert shaper.lanes.of("google", 0.0)[0].steering.state == "slow_start"  # it learns


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("MAILSLUICE_SHAPING_POLICY_FILE", "/nonexistent/policy.toml", "cannot read"),
        ("MAILSLUICE_SHAPING_REPLIES_FILE", "/nonexistent/rules.toml", "cannot read"),
        ("MAILSLUICE_SHAPING_POOL_OVERRIDES", '{"defaults": {"tls": "never"}}', "tls"),
        ("MAILSLUICE_SHAPING_STATUS_INTERVAL_S", "0", "greater than 0"),
    ],
)
def test_bad_settings_exit_2_naming_the_variable(monkeypatch, capsys, variable, value, fragment):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as exc:
        load(ShapingSettings)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert variable in err
    assert fragment in err


def test_invalid_policy_file_is_reported_with_line(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("[defaults]\nconnection_limit = 0\n")
    monkeypatch.setenv("MAILSLUICE_SHAPING_POLICY_FILE", str(bad))
    with pytest.raises(ConfigError):
        load(ShapingSettings)
    assert "file:2: defaults.connection_limit" in capsys.readouterr().err


def test_pool_overrides_apply():
    overrides = {
        "provider": {"google": {"connection_limit": 1}},
        "warmup": {"schedule": "sendgrid-like", "start": "2026-11-01"},
    }
    settings = ShapingSettings(pool_overrides=json.dumps(overrides))
    shaper = build_shaper(settings, "newip", time.time)
    assert shaper.shaping("google").connection_limit == 1
    assert shaper.warmup is not None
    assert shaper.warmup.trackers[""].plan.schedules["*"].cap(1) == 20
    # the overrides are those of the pool this worker serves, whatever its name
    assert build_shaper(settings, "other", time.time).warmup is not None
    assert build_shaper(ShapingSettings(), "newip", time.time).warmup is None


async def test_runtime_follows_commands_publishes_status_and_keeps_warmup(kafka):
    settings = ShapingSettings(
        worker_id="w-test",
        status_interval_s=3600,  # published explicitly below
        pool_overrides=json.dumps(
            {"warmup": {"schedule": "custom", "start": "2026-01-01", "table": {"1": 1000}}}
        ),
    )
    kafka_settings = kafka.settings()
    runtime = ShapingRuntime(settings, kafka_settings, "t-rt")
    runtime.queued = lambda key: 3
    await runtime.start()
    try:
        shaper = runtime.shaper
        assert shaper.try_start("google", runtime.mono()) is not None

        async def reported() -> bool:
            state = await cli.read_state(kafka_settings)
            return any(r.key == "google" for _p, w, r in state.rows("t-rt") if w == "w-test")

        # a destination the worker starts on is reported within seconds, not at the interval
        await eventually(reported, within=20, what="google in a status before the interval")
        until = time.time() + 3600
        await cli.send_command(kafka_settings, Command("t-rt", "google", "suspend", until=until))
        # the runtime applies commands in its own task
        await eventually(
            lambda: shaper.wait_time("google", runtime.mono()) > 3000,
            within=20,
            what="google suspended",
        )
        # a command for another pool is ignored
        await cli.send_command(kafka_settings, Command("t-other", "yahoo", "suspend", until=until))
        await runtime.publish()
        state = await cli.read_state(kafka_settings)
        rows = {row.key: row for _p, worker, row in state.rows("t-rt") if worker == "w-test"}
        assert rows["google"].state == "suspended"
        assert rows["google"].queued == 3
        assert "yahoo" not in rows
        await cli.send_command(kafka_settings, Command("t-rt", "google", "resume"))
        await eventually(
            lambda: shaper.wait_time("google", runtime.mono()) < 1, within=20, what="google resumed"
        )
        for _ in range(4):
            assert shaper.warmup.try_take("", "example.org", time.time()).action == "allow"
    finally:
        await runtime.stop()
    # a restarted worker restores the usage of the current period and its suspension state
    again = ShapingRuntime(settings, kafka_settings, "t-rt")
    await again.start()
    try:
        assert (
            again.shaper.warmup.trackers[""].status(time.time()).scopes["*"].used == 5
        )  # 1 start + 4 takes
        assert again.shaper.wait_time("google", again.mono()) < 1  # resumed stays resumed
        state = await cli.read_state(kafka_settings)
        assert ("t-rt", "w-test") not in state.statuses  # the clean stop left a tombstone
        # `mailsluice warmup show` reads the same ledger
        records = await warmup_cli.read_ledger(kafka_settings)
        plan = again.shaper.warmup.trackers[""].plan
        assert warmup_cli.sum_usage(plan, "t-rt", records, time.time()) == {"*": 5}
    finally:
        await again.stop()


def test_warming_pool_waits_until_the_ledger_is_restored():
    overrides = {"warmup": {"schedule": "sendgrid-like", "start": "2026-01-01"}}
    shaper = build_shaper(ShapingSettings(pool_overrides=json.dumps(overrides)), "w", time.time)
    shaper.warmup_ready = False
    assert shaper.wait_time("example.org", 0.0) == 1.0
    assert shaper.try_start("example.org", 0.0) is None
    shaper.warmup_ready = True
    assert shaper.try_start("example.org", 0.0) is not None


async def test_runtime_keeps_trying_while_kafka_is_unreachable(caplog):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    overrides = {"warmup": {"schedule": "sendgrid-like", "start": "2026-01-01"}}
    settings = ShapingSettings(pool_overrides=json.dumps(overrides))
    runtime = ShapingRuntime(
        settings, KafkaSettings(bootstrap=f"127.0.0.1:{port}", request_timeout_ms=1000), "x"
    )
    task = runtime.start_background()

    def failed_once() -> bool:
        assert not task.done(), task
        return "shaping runtime cannot start yet" in caplog.text

    await eventually(failed_once, within=30, what="a failed attempt logged")
    assert not task.done()  # retrying after the failure, not ended by it
    assert runtime.shaper.warmup_ready is False
    await runtime.stop()
    assert task.done()


async def test_runtime_background_start_with_kafka(kafka):
    overrides = {"warmup": {"schedule": "sendgrid-like", "start": "2026-01-01"}}
    settings = ShapingSettings(pool_overrides=json.dumps(overrides), worker_id="bg")
    runtime = ShapingRuntime(settings, kafka.settings(), "t-bg")
    runtime.start_background()
    try:
        await eventually(
            lambda: runtime.shaper.warmup_ready, within=20, what="the warm-up ledger restored"
        )
    finally:
        await runtime.stop()


def test_delivery_dest_settings_become_pool_defaults():
    from mailsluice.delivery.shaping.settings import delivery_defaults

    assert delivery_defaults(None, None, None) is None
    rule = delivery_defaults(2, 1_000_000.0, 100_000)
    assert rule is not None
    shaper = build_shaper(ShapingSettings(), "bench", time.time, rule)
    s = shaper.shaping("sink.example")
    assert s.connection_limit == 2
    assert s.message_rates[0].per_second == 1_000_000
    assert s.burst_of(s.message_rates[0]) == 100_000
    assert shaper.shaping("google").connection_limit == 5  # provider rules still win
    assert delivery_defaults(None, 0.25, None).max_message_rate == "0.25/s"
    # the pool overrides' own defaults win over the worker settings
    overrides = json.dumps({"defaults": {"connection_limit": 7}})
    mixed = build_shaper(ShapingSettings(pool_overrides=overrides), "p", time.time, rule)
    assert mixed.shaping("sink.example").connection_limit == 7
    assert mixed.shaping("sink.example").message_rates[0].per_second == 1_000_000


def test_delivery_service_wiring_uses_explicit_dest_settings_only():
    from mailsluice.delivery.service import shaping_runtime
    from mailsluice.delivery.worker.settings import DeliverySettings

    kafka = KafkaSettings()
    plain = shaping_runtime(DeliverySettings(pool="x"), kafka, ShapingSettings())
    assert plain.shaper.shaping("a.example").connection_limit == 10  # the policy's defaults
    assert plain.shaper.pool == "x"
    custom = DeliverySettings(pool="x", dest_max_concurrency=3, dest_max_rate=5.0)
    shaped = shaping_runtime(custom, kafka, ShapingSettings()).shaper.shaping("a.example")
    assert shaped.connection_limit == 3
    assert shaped.message_rates[0].per_second == 5.0


async def test_a_state_change_is_told_and_learned_limits_survive_a_restart(kafka):
    settings = ShapingSettings(worker_id="w-learn", status_interval_s=3600)
    kafka_settings = kafka.settings()
    pool, source = f"t-learn-{time.monotonic_ns()}", "192.0.2.10"
    await ensure_topics(kafka_settings, standard_topics(kafka_settings, [pool], 1 << 20))
    runtime = ShapingRuntime(settings, kafka_settings, pool, sources=(source,))
    await runtime.start()
    blocked = SimResult(
        "r@isp.example",
        421,
        "4.7.0",
        "Your IP 192.0.2.10 is temporarily blocked after repeated deferrals",
        "greeting",
        source,
    )
    try:
        runtime.shaper.observe("isp.example", runtime.mono(), [blocked])
        # the change becomes a destination_state event within the changes interval
        events = await read_topic(
            kafka_settings,
            EVENTS_TOPIC,
            lambda r: decode_event(r.value).pool == pool,
            expect=1,
        )
        event = decode_event(events[0].value)
        assert event.type is EventType.DESTINATION_STATE
        assert (event.routing_key, event.source, event.reply_class) == (
            "isp.example",
            source,
            "block",
        )
        assert (event.state_from, event.state_to) == ("slow_start", "blocked")
        assert (event.code, event.enhanced) == (421, "4.7.0")
        assert "temporarily blocked" in event.text
        # and the learned limits reach the control topic
        learned = await read_topic(
            kafka_settings,
            CONTROL_TOPIC,
            lambda r: r.key == learned_key(pool, source, "isp.example") and r.value is not None,
            expect=1,
        )
        assert decode_learned(learned[-1].value).state == "blocked"
    finally:
        await runtime.stop()
    # a restarted worker starts blocked too: it never connects during the interval
    again = ShapingRuntime(settings, kafka_settings, pool, sources=(source,))
    await again.start()
    try:
        await eventually(
            lambda: again.shaper.wait_time("isp.example", again.mono()) > 30,
            within=20,
            what="the block restored",
        )
        assert again.shaper.try_start("isp.example", again.mono()) is None
    finally:
        await again.stop()


def change(from_state: str, to_state: str) -> Change:
    return Change("", "google", from_state, to_state, "", "", 1.0, 1, 0.0)


def test_status_goes_out_soon_for_new_and_troubled_destinations_only():
    soon = StatusSoon(min_gap_s=2.0)
    soon.note([], lanes_created=0)
    assert not soon.due(0.0)  # nothing new
    soon.note([change("slow_start", "steady")], lanes_created=0)
    assert not soon.due(0.0)  # a healthy change waits for the interval
    soon.note([], lanes_created=1)  # a new destination
    assert soon.due(0.0)
    soon.published(0.0)
    soon.note([change("steady", "hold")], lanes_created=1)  # into trouble, 1 s later
    assert not soon.due(1.0)  # not twice within the gap
    assert soon.due(2.0)  # but kept until the gap has passed
    soon.published(2.0)
    assert not soon.due(10.0)
    soon.note([change("hold", "steady")], lanes_created=1)  # out of trouble
    assert soon.due(10.0)
    soon.published(10.0)
    soon.note([change("blocked", "probe")], lanes_created=1)  # trouble to trouble
    assert not soon.due(20.0)
