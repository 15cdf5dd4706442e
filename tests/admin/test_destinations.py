"""Destination control: records, the control state, rendering, and the CLI against real Kafka."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from mailsluice.admin import destinations as cli
from mailsluice.admin.destinations_table import LAG_NOTE, PARTIAL_NOTE, PENDING_NOTE, age_text
from mailsluice.contracts.control import (
    Command,
    ControlState,
    DestinationRow,
    Learned,
    RetryCount,
    RetryStatus,
    Status,
    command_key,
    decode_command,
    decode_retries,
    decode_status,
    encode_command,
    encode_learned,
    encode_retries,
    encode_status,
    learned_key,
    retries_key,
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
        DestinationRow("a", "steady", queued=5),
        DestinationRow("b", "hold", queued=1),
        DestinationRow("c", "slow_start", queued=50),
        DestinationRow("d", "suspended", queued=3),
        DestinationRow("e", "probing", queued=7),
        DestinationRow("f", "blocked", queued=0),
    ]
    assert [r.key for r in status_rows(rows)] == ["d", "b", "f", "c", "e", "a"]
    assert [r.key for r in status_rows(rows, limit=2)] == ["d", "b"]


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
    lines = cli.render(state, None, as_json=False, now=13.0)
    assert lines[0].split()[:16] == [
        "POOL",
        "DESTINATION",
        "SOURCE",
        "STATE",
        "AGE",
        "QUEUED",
        "HELD",
        "RETRY",
        "ACTIVE",
        "RATE/MIN",
        "CEIL/MIN",
        "CONNS",
        "PER-CONN",
        "CLASS",
        "UNTIL",
        "LAST",
    ]
    # per minute: 0.5/s is 30/min, the learned ceiling 0.75/s is 45/min; 12 s since the status
    assert lines[1].split()[:15] == [
        "p",
        "google",
        "192.0.2.10",
        "hold",
        "12s",
        "ago",
        "3",
        "0",
        "0",
        "1",
        "30",
        "45",
        "2",
        "40",
        "reputation",
    ]
    assert lines[1].endswith("421 4.7.28 unusual rate")
    # a suspension no worker reports yet: the command's state, marked, as old as the command
    assert lines[2].split()[:6] == ["p", "yahoo", "-", "suspended", "12s", "ago*"]
    assert lines[-1] == PENDING_NOTE
    js = cli.render(state, "p", as_json=True, now=13.0)
    first = json.loads(js[0])
    assert (first["key"], first["state"], first["age_s"], first["confirmed"]) == (
        "google",
        "hold",
        12.0,
        True,
    )
    assert json.loads(js[1])["confirmed"] is False


def status_with(control_ts: float, state: str = "steady", ts: float = 100.0) -> Status:
    row = DestinationRow("google", state, queued=2, source="192.0.2.1")
    return Status("p", "w", ts, (row,), control_ts)


@pytest.mark.parametrize(
    ("action", "reported", "control_ts", "shown", "pending"),
    [
        # the worker wrote its status before the command: the command's effect, marked
        ("suspend", "steady", 50.0, "suspended", True),
        ("resume", "suspended", 50.0, "resumed", True),
        ("retry-now", "suspended", 50.0, "resumed", True),
        ("resume", "steady", 50.0, "steady", True),
        # the worker had applied it: its own state, however it differs
        ("suspend", "suspended", 110.0, "suspended", False),
        ("resume", "slow_start", 110.0, "slow_start", False),
        ("suspend", "steady", 110.0, "steady", False),
    ],
)
def test_a_command_after_the_workers_status_shows_at_once(
    action, reported, control_ts, shown, pending
):
    state = ControlState()
    state.apply(status_key("p", "w"), encode_status(status_with(control_ts, reported)))
    cmd = Command("p", "google", action, until=1e10 if action == "suspend" else 0.0, ts=110.0)
    state.apply(command_key("p", "google"), encode_command(cmd))
    (rendered,) = cli.render(state, "p", as_json=True, now=112.0)
    line = json.loads(rendered)
    assert (line["state"], line["confirmed"], line["reported_state"]) == (
        shown,
        not pending,
        reported,
    )
    # the age of what is shown: the command's when pending, else the status's
    assert line["age_s"] == (2.0 if pending else 12.0)


def test_resume_shows_the_learned_state_the_worker_goes_back_to():
    state = ControlState()
    state.apply(status_key("p", "w"), encode_status(status_with(50.0, "suspended")))
    learned = Learned("p", "192.0.2.1", "google", "probing", 2.0)
    state.apply(learned_key("p", "192.0.2.1", "google"), encode_learned(learned))
    state.apply(
        command_key("p", "google"), encode_command(Command("p", "google", "resume", ts=110.0))
    )
    (line,) = cli.render(state, "p", as_json=True, now=112.0)
    assert json.loads(line)["state"] == "steady"  # a resume lifts a probe (lanes.py lift)


def test_a_providers_command_covers_its_shards_rows():
    state = ControlState()
    row = DestinationRow("google#2", "steady")
    state.apply(status_key("p", "w"), encode_status(Status("p", "w", 100.0, (row,))))
    cmd = Command("p", "google", "suspend", until=1e10, ts=110.0)
    state.apply(command_key("p", "google"), encode_command(cmd))
    (line,) = cli.render(state, "p", as_json=True, now=111.0)
    assert (json.loads(line)["key"], json.loads(line)["state"]) == ("google#2", "suspended")


def retries(mover: str, ts: float, *counts: RetryCount, partial: bool = False) -> RetryStatus:
    return RetryStatus(mover, ts, 5.0, counts, partial)


def test_held_and_retrying_are_summed_over_live_movers_only():
    state = ControlState()
    state.apply(status_key("p", "w"), encode_status(status_with(0.0, ts=100.0)))
    live = [
        retries("m1", 98.0, RetryCount("p", "google", 2, 1), RetryCount("p", "x.example", 0, 4)),
        retries("m2", 99.0, RetryCount("p", "google", 1, 0), partial=True),
        retries("gone", 10.0, RetryCount("p", "google", 50, 50)),  # 3 intervals + 10 s late
        retries("q", 99.0, RetryCount("other", "google", 7, 7)),
    ]
    for status in live:
        state.apply(retries_key(status.mover), encode_retries(status))
    assert decode_retries(encode_retries(live[1])) == live[1]
    rows = {
        json.loads(r)["key"]: json.loads(r) for r in cli.render(state, "p", as_json=True, now=100.0)
    }
    assert (rows["google"]["queued"], rows["google"]["held"], rows["google"]["retrying"]) == (
        2,
        3,
        1,
    )
    # a destination only movers know: its own row, as old as the oldest count
    x = rows["x.example"]
    assert (x["state"], x["held"], x["retrying"], x["age_s"]) == ("-", 0, 4, 2.0)
    text = cli.render(state, "p", as_json=False, now=100.0)
    assert text[-1] == PARTIAL_NOTE
    state.apply(retries_key("m2"), None)  # a mover stopped: its tombstone
    assert PARTIAL_NOTE not in cli.render(state, "p", as_json=False, now=100.0)
    with pytest.raises(ValueError):
        decode_retries(b'{"v": 2, "mover": "m", "ts": 1, "interval_s": 1, "counts": []}')


def test_status_v2_keeps_control_ts_and_v1_reads_as_unconfirmed():
    status = status_with(42.0)
    assert decode_status(encode_status(status)) == status
    v1 = {"v": 1, "pool": "p", "worker": "w", "ts": 1.0, "destinations": []}
    assert decode_status(json.dumps(v1).encode()).control_ts == 0.0
    with pytest.raises(ValueError):
        decode_status(json.dumps({**v1, "v": 3}).encode())


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0s ago"),
        (59, "59s ago"),
        (61, "1m ago"),
        (7300, "2h ago"),
        (200000, "2d ago"),
        (-3, "0s ago"),
    ],
)
def test_age_text(seconds, text):
    assert age_text(seconds) == text


@pytest.mark.parametrize(
    ("key", "first_line"),
    [
        ("gmail", "unknown destination 'gmail'; did you mean 'google'?"),
        ("Hotmail", "unknown destination 'hotmail'; did you mean 'microsoft'?"),
        ("gogle", "unknown destination 'gogle'; did you mean 'google'?"),
        ("gmail.com", "mail to gmail.com travels under provider 'google'; did you mean 'google'?"),
        ("google#3", "google has no shards; did you mean 'google'?"),
    ],
)
def test_suspend_of_an_unknown_destination_is_refused_before_kafka(
    monkeypatch, capsys, key, first_line
):
    monkeypatch.setenv("MAILSLUICE_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # nothing is asked of it
    assert cli.run(parse("suspend", key)) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"mailsluice destinations: {first_line}"
    if first_line.startswith("unknown"):
        assert "providers: apple, barracuda" in err
        assert "configured domains: yahoo.co.jp" in err
        assert "any other domain name" in err


@pytest.mark.parametrize("key", ["google", "example.com", "Mail.Example.ORG.", "yahoo.co.jp"])
def test_provider_names_and_any_domain_are_destinations(key):
    assert cli.refusal(parse("suspend", key)) is None


def test_a_policy_of_ones_own_names_its_providers_and_shards(tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text(
        "[defaults]\nconnection_limit = 1\nmax_message_rate = '1/s'\n"
        "max_deliveries_per_connection = 1\nmax_recipients_per_transaction = 1\n"
        "tls = 'opportunistic'\n[provider.acme]\nshards = 4\n"
    )
    assert cli.refusal(parse("suspend", "acme#3", "--policy", str(policy))) is None
    assert "acme#0 to acme#3" in (
        cli.refusal(parse("suspend", "acme#4", "--policy", str(policy))) or ""
    )
    assert cli.refusal(parse("suspend", "acme")) is not None  # the shipped policy has none
    missing = parse("suspend", "acme", "--policy", str(tmp_path / "none.toml"))
    assert cli.run(missing) == 2


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
    capsys.readouterr()
    state = asyncio.run(cli.read_state(settings))
    assert state.commands[("t-ctl", "google")].action == "resume"
    # the worker's status (control_ts 0) predates the resume: the next list shows the resume,
    # marked as not yet reported, however old the status is
    assert cli.run(parse("list", "--pool", "t-ctl")) == 0
    out = capsys.readouterr().out.splitlines()
    (line,) = [line for line in out if " google " in line]
    assert line.split()[3] == "resumed" and line.split()[5] == "ago*"
    assert out[-1] == PENDING_NOTE


def test_each_pool_shows_its_queue_topics_unfinished_records_from_live_workers():
    state = ControlState()
    row = DestinationRow("google", "steady", queued=3)
    for worker, ts, lag in (("w1", 95.0, 40), ("w2", 99.0, 2), ("dead", 10.0, 500)):
        status = Status("p", worker, ts, (row,), lag=lag, interval_s=10.0)
        state.apply(status_key("p", worker), encode_status(status))
    assert decode_status(encode_status(Status("p", "w", 1.0, (), 2.0, 7, 10.0))).lag == 7
    text = cli.render(state, "p", as_json=False, now=100.0)
    assert LAG_NOTE.format(pool="p", lag=42) in text  # the dead worker's partitions are others'
    rendered = cli.render(state, "p", as_json=True, now=100.0)
    assert sorted(json.loads(r)["worker_lag"] for r in rendered) == [2, 40, 500]
