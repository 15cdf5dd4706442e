"""Destination control: records, the control state, rendering, and the CLI against real Kafka."""

from __future__ import annotations

import argparse
import math

import pytest

from mailsluice.admin import destinations as cli
from mailsluice.contracts.control import (
    Command,
    ControlState,
    DestinationRow,
    Status,
    command_key,
    decode_command,
    encode_command,
    encode_status,
    status_key,
)
from mailsluice.contracts.topics import CONTROL_TOPIC
from mailsluice.delivery.shaping.runtime import status_rows


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mailsluice destinations")
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_command_round_trip_and_unknown_action():
    cmd = Command("bulk", "google", "suspend", until=200.0, reason="TS04 storm", ts=100.0, by="op")
    assert decode_command(encode_command(cmd)) == cmd
    with pytest.raises(ValueError):
        decode_command(b'{"v": 1, "pool": "p", "key": "k", "action": "explode"}')
    with pytest.raises(ValueError):
        decode_command(b'{"v": 99, "pool": "p", "key": "k", "action": "resume"}')


def test_control_state_applies_commands_statuses_and_tombstones():
    state = ControlState()
    cmd = Command("bulk", "google", "suspend", until=500.0, ts=1.0)
    assert state.apply(command_key("bulk", "google"), encode_command(cmd)) == cmd
    row = DestinationRow("google", "suspended", queued=12, rate=math.inf, until=500.0)
    status = Status("bulk", "w1", 2.0, (row,))
    state.apply(status_key("bulk", "w1"), encode_status(status))
    assert state.statuses[("bulk", "w1")] == status  # infinity survives JSON
    assert state.rows("bulk") == [("bulk", "w1", row)]
    assert state.rows("other") == []
    state.apply(status_key("bulk", "w1"), None)
    state.apply(command_key("bulk", "google"), None)
    assert state.statuses == {}
    assert state.commands == {}
    # junk is skipped, never fatal
    assert state.apply(b"cmd/bulk/google", b"not json") is None
    assert state.apply(b"weird", b"{}") is None
    assert state.apply(None, b"{}") is None


def test_status_rows_rank_troubled_destinations_first_and_bound():
    rows = [
        DestinationRow("a", "normal", queued=5),
        DestinationRow("b", "throttled", queued=1),
        DestinationRow("c", "normal", queued=50),
    ]
    assert [r.key for r in status_rows(rows)] == ["b", "c", "a"]
    assert len(status_rows(rows, limit=2)) == 2


def test_build_command_and_arguments():
    args = parse("suspend", "Google", "--pool", "bulk", "--for", "2h", "--reason", "TS04")
    cmd = cli.build_command(args, 1000.0)
    assert (cmd.pool, cmd.key, cmd.action, cmd.until, cmd.reason) == (
        "bulk",
        "google",
        "suspend",
        1000.0 + 7200,
        "TS04",
    )
    assert cli.build_command(parse("resume", "x.example"), 5.0).until == 0.0
    assert cli.build_command(parse("retry-now", "x.example"), 5.0).pool == "default"


def test_bad_duration_exits_2_before_kafka(capsys):
    assert cli.run(parse("suspend", "google", "--for", "a while")) == 2
    assert "invalid duration" in capsys.readouterr().err


def test_render_table_and_json():
    state = ControlState()
    row = DestinationRow(
        "google",
        "hold",
        3,
        1,
        0.5,
        2,
        0.0,
        "421 4.7.28 unusual rate",
        "google-x",
        source="192.0.2.10",
        ceiling=0.75,
        per_connection=40,
        last_class="reputation",
    )
    state.apply(status_key("p", "w"), encode_status(Status("p", "w", 1.0, (row,))))
    cmd = Command("p", "yahoo", "suspend", until=2e9, reason="maintenance", ts=1.0)
    state.apply(command_key("p", "yahoo"), encode_command(cmd))
    lines = cli.render(state, None, as_json=False, now=1.0)
    assert lines[0].startswith("POOL")
    assert lines[0].split()[:12] == [
        "POOL",
        "DESTINATION",
        "SOURCE",
        "STATE",
        "QUEUED",
        "ACTIVE",
        "RATE/MIN",
        "CEIL/MIN",
        "CONNS",
        "PER-CONN",
        "CLASS",
        "UNTIL",
    ]
    # per minute: 0.5/s is 30/min, the learned ceiling 0.75/s is 45/min
    assert lines[1].split()[:11] == [
        "p",
        "google",
        "192.0.2.10",
        "hold",
        "3",
        "1",
        "30",
        "45",
        "2",
        "40",
        "reputation",
    ]
    assert lines[1].endswith("421 4.7.28 unusual rate")
    assert "yahoo" in lines[2]
    assert "(suspend)" in lines[2]
    assert "maintenance" in lines[2]
    js = cli.render(state, "p", as_json=True, now=1.0)
    assert '"key": "google"' in js[0]


def test_cli_against_kafka(kafka, monkeypatch, capsys):
    from mailsluice.kafka.clients import make_producer

    monkeypatch.setenv("MAILSLUICE_KAFKA_BOOTSTRAP", kafka.bootstrap)
    assert cli.run(parse("suspend", "google", "--pool", "t-ctl", "--for", "1h")) == 0
    assert "suspend t-ctl/google until" in capsys.readouterr().out

    settings = kafka.settings()

    async def publish_status():
        producer = make_producer(settings, max_message_size=1 << 20, client_id="test")
        await producer.start()
        try:
            row = DestinationRow("google", "suspended", queued=4, rate=100.0, connections=5)
            await producer.send_and_wait(
                CONTROL_TOPIC,
                encode_status(Status("t-ctl", "w9", 1.0, (row,))),
                key=status_key("t-ctl", "w9"),
            )
        finally:
            await producer.stop()

    import asyncio

    asyncio.run(publish_status())
    assert cli.run(parse("list", "--pool", "t-ctl")) == 0
    out = capsys.readouterr().out.splitlines()
    assert any("google" in line and "suspended" in line for line in out[1:])
    state = asyncio.run(cli.read_state(settings))
    assert state.commands[("t-ctl", "google")].action == "suspend"
    assert cli.run(parse("resume", "google", "--pool", "t-ctl")) == 0
    state = asyncio.run(cli.read_state(settings))
    assert state.commands[("t-ctl", "google")].action == "resume"
