"""The pure parts of `make bench` (scripts/bench*.py), and its Postfix
tools for real: smtp-source into smtp-sink, and the private Postfix relay started and stopped."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.scripts import script

bp = script("bench_postfix")
bench = script("bench")
e2e = script("bench_e2e")
latency = script("bench_latency")
run = script("bench_run")
smtp = script("bench_smtp")
tools = script("bench_tools")


# --------------------------------------------------------------------------- parsers


def test_parse_sink_counters_reads_every_cr_separated_record() -> None:
    text = "sess=0 quit=0 mesg=1\rsess=0 quit=0 mesg=2\rsess=1 quit=1 mesg=2\r"
    counters = tools.parse_sink_counters(text)
    assert [c.messages for c in counters] == [1, 2, 2]
    assert counters[-1] == tools.SinkCounters(sessions=1, quits=1, messages=2)


def test_parse_sink_counters_ignores_noise_and_partial_records() -> None:
    assert tools.parse_sink_counters("") == []
    assert tools.parse_sink_counters("smtp-sink: warning: x\rsess=3 quit=2") == []
    assert tools.parse_sink_counters("junk sess=10 quit=9 mesg=200\r")[0].messages == 200


def test_parse_source_counter_takes_the_last_number() -> None:
    assert tools.parse_source_counter("1\r2\r3\r") == 3
    assert tools.parse_source_counter("1\r2\r10\r11") == 11
    assert tools.parse_source_counter("") == 0
    assert tools.parse_source_counter("smtp-source: fatal: connect: refused\n") == 0


def test_parse_sent_stamp_reads_the_header_only() -> None:
    raw = b"From: a@b\r\nX-Bench-Sent: 1700000000.250000\r\n\r\nX-Bench-Sent: 1\r\n"
    assert latency.parse_sent_stamp(raw) == pytest.approx(1700000000.25)
    assert latency.parse_sent_stamp(b"From: a@b\n\nX-Bench-Sent: 5\n") is None
    assert latency.parse_sent_stamp(b"x-bench-sent: 12.5\n\nbody") == pytest.approx(12.5)


# --------------------------------------------------------------------------- figures


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert tools.percentile(values, 50) == 50.0
    assert tools.percentile(values, 99) == 99.0
    assert tools.percentile(values, 100) == 100.0
    assert tools.percentile(values, 0) == 1.0
    assert tools.percentile([7.0, 1.0, 3.0], 50) == 3.0  # unsorted input
    assert tools.percentile([], 50) is None
    with pytest.raises(ValueError):
        tools.percentile([1.0], 101)


def test_rate_and_ratio_refuse_meaningless_input() -> None:
    assert tools.rate(300, 1.5) == 200.0
    assert tools.rate(300, 0) is None
    assert tools.rate(0, 1.0) is None
    assert tools.rate(10, None) is None
    assert run.ratio(300.0, 600.0) == 0.5
    assert run.ratio(None, 600.0) is None
    assert run.ratio(300.0, 0.0) is None


def test_latency_summary() -> None:
    summary = latency.latency_summary([10.0, 20.04, 30.0, 1000.0])
    assert summary == {"p50": 20.0, "p99": 1000.0, "max": 1000.0}
    assert latency.latency_summary([]) == {"p50": None, "p99": None, "max": None}


def test_report_json_has_the_required_keys_and_derives_peak_and_ratio() -> None:
    report = run.Report()
    report.figures.update(
        ingest_msgs_per_s=900.0,
        delivery_msgs_per_s=800.0,
        e2e_p50_ms=12.0,
        e2e_p99_ms=40.0,
        postfix_msgs_per_s=500.0,
        ours_e2e_msgs_per_s=250.0,
        peak_rss_mb_by_process={"ingest": 80.5, "delivery": 95.0, "kafka": 400.0},
    )
    figures = json.loads(json.dumps(report.finish()))
    assert set(run.REQUIRED_KEYS) <= set(figures)
    assert figures["peak_rss_mb"] == 95.0  # Kafka is reported apart, not as ours
    assert figures["ratio_vs_postfix"] == 0.5
    assert figures["errors"] == []
    assert report.complete


def test_report_with_a_failed_stage_keeps_nulls_and_is_incomplete() -> None:
    report = run.Report()
    report.fail("delivery", "worker exited 1")
    report.figures["peak_rss_mb_by_process"] = {"ingest": 80.0, "delivery": None, "kafka": 1.0}
    figures = report.finish()
    assert set(run.REQUIRED_KEYS) <= set(figures)
    assert figures["peak_rss_mb"] is None  # not the max of a partial set
    assert figures["ratio_vs_postfix"] is None
    assert figures["errors"] == ["delivery: worker exited 1"]
    assert not report.complete


# --------------------------------------------------------------------------- configuration


def test_source_command_shape() -> None:
    work = smtp.Workload(count=100, sessions=5, size=2048, reuse=True)
    cmd = smtp.source_command("127.0.0.20:2625", work)
    assert cmd[0].endswith("smtp-source")
    assert cmd[-1] == "127.0.0.20:2625"
    assert "-d" in cmd
    assert cmd[cmd.index("-m") + 1] == "100"
    assert cmd[cmd.index("-s") + 1] == "5"
    assert cmd[cmd.index("-l") + 1] == "2048"
    new_conn = smtp.source_command("h:1", smtp.Workload(1, 1, 10, reuse=False))
    assert "-d" not in new_conn


def test_postfix_config_is_a_private_relay_to_the_sink(tmp_path: Path) -> None:
    main_cf = dict(
        line.split(" = ", 1)
        for line in bp.main_cf(tmp_path, "127.0.0.20", "127.0.0.21:2626", 20).splitlines()
    )
    assert main_cf["relayhost"] == "[127.0.0.21]:2626"
    assert main_cf["mydestination"] == ""
    assert main_cf["mynetworks"] == "127.0.0.0/8"
    assert main_cf["queue_directory"] == str(tmp_path / "spool")
    assert main_cf["data_directory"] == str(tmp_path / "data")
    assert main_cf["maillog_file"].startswith(str(tmp_path))
    assert main_cf["default_destination_concurrency_limit"] == "20"
    assert main_cf["smtp_tls_security_level"] == "none"
    assert main_cf["local_transport"].startswith("error:")
    master = bp.master_cf("127.0.0.20:2625").splitlines()
    assert master[0].split() == ["127.0.0.20:2625", "inet", "n", "-", "n", "-", "-", "smtpd"]
    assert all(row.split()[4] == "n" for row in master)  # no chroot
    assert any(row.startswith("postlog unix-dgram") for row in master)


# --------------------------------------------------------------------------- real tools


def test_smtp_source_into_smtp_sink_is_counted(tmp_path: Path) -> None:
    sink = smtp.SmtpSink(f"127.0.0.21:{bench.kafka_local.free_port('127.0.0.21')}", tmp_path)
    sink.start()
    try:
        result = smtp.measure_relay_e2e(sink, sink.listen, smtp.Workload(40, 4, 512, True), 30)
    finally:
        sink.stop()
    assert result.error is None
    assert result.delivered == 40
    assert result.e2e_msgs_per_s is not None and result.e2e_msgs_per_s > 0
    assert tools.pid_alive(sink.pid) is False


def test_sink_wait_gives_up_when_nothing_arrives(tmp_path: Path) -> None:
    sink = smtp.SmtpSink(f"127.0.0.21:{bench.kafka_local.free_port('127.0.0.21')}", tmp_path)
    sink.start()
    try:
        started = time.monotonic()
        assert sink.wait_for(1, timeout=30, stall_s=0.5) is None
        assert time.monotonic() - started < 5
        failed = smtp.measure_relay_e2e(sink, "127.0.0.21:1", smtp.Workload(5, 1, 10, True), 10)
    finally:
        sink.stop()
    assert failed.e2e_msgs_per_s is None
    assert failed.error is not None and "smtp-source failed" in failed.error


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A temp dir the postfix user can reach (pytest's tmp_path root is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="bench-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_postfix_peer_refuses_a_queue_the_postfix_user_cannot_reach(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    peer = bp.PostfixPeer(closed / "postfix", "127.0.0.20:2625", "127.0.0.21:2626")
    with pytest.raises(RuntimeError, match="cannot reach"):
        peer.start()
    assert peer.master_pid is None


def test_private_postfix_relays_to_the_sink_and_stops_clean(open_dir: Path) -> None:
    tmp_path = open_dir
    sink = smtp.SmtpSink(f"127.0.0.21:{bench.kafka_local.free_port('127.0.0.21')}", tmp_path)
    listen = f"127.0.0.20:{bench.kafka_local.free_port('127.0.0.20')}"
    peer = bp.PostfixPeer(tmp_path / "postfix", listen, sink.listen, concurrency=5)
    sink.start()
    try:
        peer.start()
        master = peer.master_pid
        assert master is not None and tools.pid_alive(master)
        result = smtp.measure_relay_e2e(sink, listen, smtp.Workload(20, 2, 1024, False), 60)
        assert result.error is None, f"{result.error}\n{peer.maillog_tail()}"
        assert result.delivered == 20
        assert "status=sent" in peer.maillog_tail(200)
        children = tools.children_of(master)
        assert children  # smtpd, qmgr, smtp... run under the master
    finally:
        problems = peer.stop()
        sink.stop()
    assert problems == []
    assert not tools.pid_alive(master)
    assert not any(tools.pid_alive(pid) for pid in children)


class _CountingSink:
    def __init__(self, messages: int) -> None:
        self.messages = messages


def test_sink_total_flags_lost_messages_and_counts_extras() -> None:
    lossy = run.Report()
    bench.check_sink_total(_CountingSink(1250), 1000, 300, lossy)  # 250 of 300 arrived
    assert lossy.figures["sink_extra_messages"] == -50
    assert lossy.errors == ["sink count: 50 of 300 accepted messages never arrived"]

    duplicates = run.Report()
    bench.check_sink_total(_CountingSink(103), 0, 100, duplicates)
    assert duplicates.figures["sink_extra_messages"] == 3  # at least once: counted, not failed
    assert duplicates.errors == []


def _result(rate: float | None, error: str | None = None) -> object:
    return smtp.PeerResult(rate, rate, 10, 1.0, error, 10)


def test_best_round_takes_the_fastest_and_refuses_a_failed_set() -> None:
    assert e2e.best_round([_result(300.0), _result(450.0), _result(420.0)]).e2e_msgs_per_s == 450
    with pytest.raises(RuntimeError, match="only 3/10"):
        e2e.best_round([_result(300.0), _result(None, "only 3/10 reached the sink")])
