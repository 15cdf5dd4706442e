"""The suppression list: the pure record logic, the store against the real broker, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from support.loopback import free_port
from support.paths import REPO

from mailsluice.admin.suppress import address_problem, format_entry, suppressions_spec
from mailsluice.cli import main
from mailsluice.contracts.suppressions import Suppression, encode_suppression
from mailsluice.kafka.admin import ensure_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.suppression.store import (
    SuppressionStore,
    add_suppression,
    apply_record,
    remove_suppression,
)


def unique_address(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.test"


def record(address: str, reason: str = "manual") -> bytes:
    return encode_suppression(Suppression(address=address, reason=reason))


# --- pure record logic ------------------------------------------------------------------------


def test_apply_record_adds_updates_and_removes() -> None:
    table: dict[str, Suppression] = {}
    assert apply_record(table, b"a@example.test", record("a@example.test"))
    assert table["a@example.test"].reason == "manual"
    assert apply_record(table, b"a@example.test", record("a@example.test", reason="bounce"))
    assert table["a@example.test"].reason == "bounce"
    assert apply_record(table, b"a@example.test", None)
    assert table == {}


def test_apply_record_same_value_and_unknown_tombstone_change_nothing() -> None:
    table: dict[str, Suppression] = {}
    value = record("a@example.test")
    apply_record(table, b"a@example.test", value)
    assert not apply_record(table, b"a@example.test", value)
    assert not apply_record(table, b"b@example.test", None)
    assert list(table) == ["a@example.test"]


def test_apply_record_normalises_keys() -> None:
    table: dict[str, Suppression] = {}
    apply_record(table, b" Mixed.Case@Example.TEST ", record("Mixed.Case@Example.TEST"))
    assert list(table) == ["mixed.case@example.test"]
    apply_record(table, "MIXED.case@example.test", None)
    assert table == {}


def test_apply_record_undecodable_value_still_suppresses() -> None:
    table: dict[str, Suppression] = {}
    assert apply_record(table, b"x@example.test", b"\xff not json")
    assert table["x@example.test"].reason == "unreadable"


def test_apply_record_ignores_records_without_key() -> None:
    table: dict[str, Suppression] = {}
    assert not apply_record(table, None, record("a@example.test"))
    assert not apply_record(table, b"  ", record("a@example.test"))
    assert table == {}


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("user@example.test", None),
        ("  user@example.test ", None),
        ("", "empty"),
        ("no-at-sign", "exactly one @"),
        ("a@b@example.test", "exactly one @"),
        ("@example.test", "non-empty"),
        ("user@", "non-empty"),
        ("us er@example.test", "whitespace"),
    ],
)
def test_address_problem(address: str, problem: str | None) -> None:
    found = address_problem(address)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_format_entry() -> None:
    entry = Suppression(address="a@example.test", reason="bounce", source="events", ts=0.0)
    assert format_entry(entry) == "a@example.test\tglobal\tbounce\tevents\t1970-01-01T00:00:00Z"


# --- the store against the real broker --------------------------------------------------------


@pytest.fixture
async def producer(kafka_settings: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    await ensure_topics(kafka_settings, suppressions_spec(kafka_settings))
    prod = make_producer(kafka_settings, max_message_size=65536, client_id="test-suppression")
    await prod.start()
    try:
        yield prod
    finally:
        await prod.stop()


@pytest.fixture
async def store(
    kafka_settings: KafkaSettings, producer: AIOKafkaProducer
) -> AsyncIterator[SuppressionStore]:
    st = SuppressionStore(kafka_settings, client_id="test-suppression-store")
    await st.start(timeout=60)
    try:
        yield st
    finally:
        await st.stop()


async def test_store_follows_adds_and_tombstones_live(
    store: SuppressionStore, producer: AIOKafkaProducer
) -> None:
    address = unique_address()
    assert store.ready
    assert not store.contains(address)
    before = len(store)
    entry = await add_suppression(producer, address, reason="bounce", source="test")
    assert entry.address == address
    await store.wait_for(address, timeout=15)
    assert len(store) == before + 1
    got = store.get(address)
    assert got is not None and got.reason == "bounce" and got.source == "test"
    await remove_suppression(producer, address)
    await store.wait_for(lambda: not store.contains(address), timeout=15)
    assert store.get(address) is None


async def test_store_is_case_insensitive(
    store: SuppressionStore, producer: AIOKafkaProducer
) -> None:
    address = unique_address("Case.Sensitive")
    await add_suppression(producer, address.upper())
    await store.wait_for(address.lower(), timeout=15)
    assert store.contains(address)
    assert store.contains(f"  {address.swapcase()} ")
    assert address in store
    # A tombstone with yet another spelling removes the same entry.
    await remove_suppression(producer, address.title())
    await store.wait_for(lambda: not store.contains(address), timeout=15)


async def test_new_store_loads_current_state_before_ready(
    kafka_settings: KafkaSettings, producer: AIOKafkaProducer
) -> None:
    kept, removed, updated = unique_address("kept"), unique_address("gone"), unique_address("upd")
    await add_suppression(producer, kept, reason="manual")
    await add_suppression(producer, removed)
    await add_suppression(producer, updated, reason="first")
    await remove_suppression(producer, removed)
    await add_suppression(producer, updated.upper(), reason="second")

    fresh = SuppressionStore(kafka_settings, client_id="test-suppression-fresh")
    assert not fresh.ready
    await fresh.start(timeout=60)
    try:
        # No waiting: start() returns only once everything written before it is applied.
        assert fresh.ready
        assert fresh.contains(kept)
        assert not fresh.contains(removed)
        entry = fresh.get(updated)
        assert entry is not None and entry.reason == "second"
        assert [e.address.lower() for e in fresh.entries()] == sorted(
            e.address.lower() for e in fresh.entries()
        )
        # Stopped and started again, it reloads the same state.
        await fresh.stop()
        assert not fresh.ready
        await fresh.start(timeout=60)
        assert fresh.ready and fresh.contains(kept) and not fresh.contains(removed)
    finally:
        await fresh.stop()
    assert not fresh.ready


async def test_wait_for_times_out(store: SuppressionStore) -> None:
    with pytest.raises(TimeoutError):
        await store.wait_for(unique_address("never"), timeout=0.5)


async def test_store_start_fails_cleanly_without_the_topic(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsluice.suppression import store as store_module

    missing = f"mailsluice.test.missing-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(store_module, "SUPPRESSIONS_TOPIC", missing)
    st = SuppressionStore(kafka_settings)
    with pytest.raises(TimeoutError, match="does not exist"):
        await st.start(timeout=1.5)
    assert not st.ready


async def test_store_keeps_following_across_a_broker_restart(
    kafka, kafka_settings: KafkaSettings
) -> None:
    await ensure_topics(kafka_settings, suppressions_spec(kafka_settings))
    st = SuppressionStore(kafka_settings, client_id="test-suppression-restart")
    await st.start(timeout=60)
    view = st._view
    assert view is not None
    down = False
    met_outage = asyncio.Event()  # a fetch of the follower began and ended with the broker down
    fetch = view._fetch

    async def watched_fetch() -> None:
        began_down = down
        try:
            await fetch()
        finally:
            if began_down and down:
                met_outage.set()

    view._fetch = watched_fetch  # type: ignore[method-assign]
    try:
        # Blocking process control runs in a thread so the store's follower keeps running.
        await asyncio.to_thread(kafka.stop)
        down = True
        try:
            # The outage lasts until the follower has met it with a whole fetch.
            async with asyncio.timeout(30):
                await met_outage.wait()
            assert st.ready  # the last known table stays usable during an outage
        finally:
            down = False
            await asyncio.to_thread(kafka.start)
        address = unique_address("after-restart")
        prod = make_producer(kafka_settings, max_message_size=65536, client_id="test-restart")
        await prod.start()
        try:
            await add_suppression(prod, address)
        finally:
            await prod.stop()
        await st.wait_for(address, timeout=60)
    finally:
        await st.stop()


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def cli_env(kafka, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MAILSLUICE_KAFKA_BOOTSTRAP", kafka.bootstrap)
    return str(kafka.bootstrap)


def listed_addresses(output: str) -> list[str]:
    return [line.split("\t")[0] for line in output.splitlines() if line]


def test_cli_add_list_remove(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    address = unique_address("cli")
    assert main(["suppress", "add", address, "--reason", "complaint"]) == 0
    assert address in capsys.readouterr().out

    assert main(["suppress", "list"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(address)]
    assert len(lines) == 1
    listed, scope, reason, source, when = lines[0].split("\t")
    assert (listed, scope, reason, source) == (address, "global", "complaint", "cli")
    assert when.endswith("Z") and when[:2] == "20"

    assert main(["suppress", "list", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    mine = [e for e in entries if e["address"] == address]
    assert len(mine) == 1 and mine[0]["reason"] == "complaint"

    assert main(["suppress", "remove", address.upper()]) == 0
    capsys.readouterr()
    assert main(["suppress", "list"]) == 0
    assert address not in listed_addresses(capsys.readouterr().out)


def test_cli_scopes(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    address = unique_address("scoped")
    assert main(["suppress", "add", address, "--scope", "tenant:acme"]) == 0
    assert main(["suppress", "add", address, "--scope", "list:acme/news"]) == 0
    assert f"{address}\tlist:acme/news\tmanual\tcli\t" in capsys.readouterr().out

    def listed(*args: str) -> list[tuple[str, str]]:
        assert main(["suppress", "list", *args]) == 0
        rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
        return [(row[0], row[1]) for row in rows if row[0] == address]

    assert listed() == [(address, "list:acme/news"), (address, "tenant:acme")]
    assert listed("--scope", "tenant:acme") == [(address, "tenant:acme")]
    assert listed("--scope", "global") == []
    # removing the global entry (none here) leaves the scoped ones; removing one scope's, that one
    assert main(["suppress", "remove", address]) == 0
    assert main(["suppress", "remove", address.upper(), "--scope", "tenant:acme"]) == 0
    capsys.readouterr()
    assert listed() == [(address, "list:acme/news")]
    assert main(["suppress", "list", "--json", "--scope", "list:acme/news"]) == 0
    mine = [e for e in json.loads(capsys.readouterr().out) if e["address"] == address]
    assert [e["scope"] for e in mine] == ["list:acme/news"]


@pytest.mark.parametrize("label", ["tenant:", "list:acme", "domain:Not A Domain", "everyone"])
def test_cli_rejects_bad_scopes(
    cli_env: str, capsys: pytest.CaptureFixture[str], label: str
) -> None:
    assert main(["suppress", "add", "a@example.test", "--scope", label]) == 2
    assert "not a suppression scope" in capsys.readouterr().err


@pytest.mark.parametrize("address", ["no-at-sign", "a@b@example.test", "@example.test", "x@"])
def test_cli_rejects_bad_addresses(
    cli_env: str, capsys: pytest.CaptureFixture[str], address: str
) -> None:
    assert main(["suppress", "add", address]) == 2
    err = capsys.readouterr().err
    assert "invalid address" in err and repr(address) in err


def test_cli_reports_unreachable_kafka(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:

    bootstrap = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("MAILSLUICE_KAFKA_BOOTSTRAP", bootstrap)
    assert main(["suppress", "--timeout", "5", "list"]) == 1
    assert bootstrap in capsys.readouterr().err


def test_cli_help_lists_actions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["suppress", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for action in ("add", "remove", "list"):
        assert action in out


def test_console_script_list_by_subprocess(kafka) -> None:
    address = unique_address("proc")
    env = {**os.environ, "MAILSLUICE_KAFKA_BOOTSTRAP": kafka.bootstrap}
    exe = REPO / ".venv" / "bin" / "mailsluice"
    added = subprocess.run(
        [str(exe), "suppress", "add", address, "--reason", "subprocess"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    listed = subprocess.run(
        [str(exe), "suppress", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert address in listed_addresses(listed.stdout)
