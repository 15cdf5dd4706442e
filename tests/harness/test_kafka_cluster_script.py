"""scripts/kafka_cluster.py without starting Java: what each node runs with, and the CLI when
nothing runs (tests/durability/ runs the real cluster)."""

from __future__ import annotations

import json
from pathlib import Path

from support.kafka_broker import kafka_local
from support.scripts import script

kafka_config = script("kafka_config")
kafka_cluster = script("kafka_cluster")


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_a_cluster_node_replicates_everything_three_times_with_two_in_sync(
    tmp_path: Path,
) -> None:
    voters = "1@127.0.0.1:9101,2@127.0.0.1:9102,3@127.0.0.1:9103"
    props = _props(
        kafka_config.server_properties(tmp_path, 9002, 9102, node_id=2, voters=voters, replicas=3)
    )
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == voters
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["unclean.leader.election.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["broker.session.timeout.ms"] == "6000"


def test_a_single_broker_keeps_one_replica(tmp_path: Path) -> None:
    props = _props(kafka_config.server_properties(tmp_path, 9092, 9093))
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["default.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"
    assert "broker.session.timeout.ms" not in props


def test_overrides_replace_or_add_properties(tmp_path: Path) -> None:
    overrides = {"group.initial.rebalance.delay.ms": "3000", "log.retention.ms": "1000"}
    props = _props(kafka_config.server_properties(tmp_path, 9092, 9093, overrides=overrides))
    assert props["group.initial.rebalance.delay.ms"] == "3000"  # the suite's default is 0
    assert props["log.retention.ms"] == "1000"
    assert props["node.id"] == "1"


def test_cluster_cli_when_nothing_runs(tmp_path: Path, capsys) -> None:
    assert kafka_local.main(["kill", "--dir", str(tmp_path), "--node", "1"]) == 1
    (tmp_path / "cluster.json").write_text(
        json.dumps({"cluster_id": "x", "version": "4.4.0", "nodes": [[1, 2], [3, 4], [5, 6]]})
    )
    state = kafka_cluster.read_cluster(tmp_path)
    assert state.bootstrap == "127.0.0.1:1,127.0.0.1:3,127.0.0.1:5"
    assert state.voters == "1@127.0.0.1:2,2@127.0.0.1:4,3@127.0.0.1:6"
    assert kafka_local.main(["status", "--dir", str(tmp_path)]) == 1
    assert "node 3 127.0.0.1:5 not running" in capsys.readouterr().out
    assert kafka_local.main(["kill", "--dir", str(tmp_path), "--node", "2"]) == 0
    assert kafka_local.main(["stop", "--dir", str(tmp_path)]) == 0
    assert "stopped 0 nodes" in capsys.readouterr().out
