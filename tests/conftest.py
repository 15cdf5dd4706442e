"""Real infrastructure: a Kafka broker (and a three-broker cluster for the modules that ask for
one), a loopback DNS server, fake remote MXes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import uvloop
from support.dns_server import DnsServer
from support.fake_mx import FakeMx, SmtpSink
from support.k8s_cluster import K8sCluster
from support.k8s_fixtures import shared_cluster, stop_shared_cluster
from support.kafka_broker import KafkaBroker, start_broker
from support.kafka_cluster import KafkaCluster, start_cluster

from mailsluice.kafka.settings import KafkaSettings

T = TypeVar("T", KafkaBroker, KafkaCluster)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    """Tests run in file order. pytest-asyncio gives async tests a session-scoped loop-factory
    parameter that sync tests lack, and pytest's grouping by parameter would then move each
    module's sync tests after every async test of the suite, away from the module fixtures
    (and the state) they share with their neighbours."""
    place = {item.nodeid: i for i, item in enumerate(items)}
    yield
    items.sort(key=lambda item: place[item.nodeid])


@pytest.hookimpl(tryfirst=True)
def pytest_itemcollected(item: pytest.Item) -> None:
    """Markers are true by construction: every test that uses the broker (directly or through
    another fixture) is marked `kafka`, and only those; so is every test of the cluster."""
    names = getattr(item, "fixturenames", ())
    if "kafka" in names or "kafka_cluster" in names:
        item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A real Kafka 4 broker (KRaft) on 127.0.0.1; `.bootstrap`, `.stop()`, `.start()`.

    A test that stops it should start it again (try/finally); if it does not, the autouse
    `_kafka_left_running` fixture restarts it (same ports and data) after that test.
    """
    yield from _watched(start_broker(tmp_path_factory.mktemp("kafka")), _brokers)


_brokers: list[KafkaBroker] = []


def _watched(server: T, watched: list[T]) -> Iterator[T]:
    """Yield `server` while `_kafka_left_running` watches it; stop it (by pid) after."""
    watched.append(server)
    try:
        yield server
    finally:
        watched.remove(server)
        server.stop()


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A real three-node Kafka cluster (KRaft, each node broker+controller) for one module:
    three JVMs, so only the modules that use it start it, and it is stopped (by pid) after.
    `.kill(i)` SIGKILLs node i, `.stop_node(i)`, `.start_nodes(i, ...)`; what a test leaves
    down, `_kafka_left_running` starts again after it."""
    yield from _watched(start_cluster(tmp_path_factory.mktemp("kafka-cluster")), _clusters)


_clusters: list[KafkaCluster] = []


@pytest.fixture(scope="session")
def kafka_settings(kafka: KafkaBroker) -> KafkaSettings:
    """Settings of the clients of the session broker, as the product reads them."""
    return kafka.settings()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sCluster]:
    """A real kube-apiserver + etcd (built from Go modules), started once for every operator
    and chart test module."""
    cluster = shared_cluster(tmp_path_factory)
    yield cluster
    stop_shared_cluster()


@pytest.fixture(autouse=True)
def _kafka_left_running() -> Iterator[None]:
    """If a test stopped the session broker (or a cluster's node) and did not start it again,
    restart it for the rest."""
    yield
    for broker in _brokers:
        if not broker.running:
            broker.start()
    for cluster in _clusters:
        cluster.ensure_all_running()


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DnsServer]:
    """An authoritative DNS server on 127.0.0.1 (UDP+TCP, one free port) with a mutable zone."""
    server = DnsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dns_zone(dns_server: DnsServer) -> Iterator[DnsServer]:
    """The session DNS server with an empty zone for this test (cleared again afterwards)."""
    dns_server.clear()
    try:
        yield dns_server
    finally:
        dns_server.clear()


@pytest.fixture(scope="session")
def dns_nameserver(dns_server: DnsServer) -> str:
    """The test DNS server as "127.0.0.1:port", the format of MAILSLUICE_DNS_NAMESERVERS."""
    return dns_server.nameserver


@pytest.fixture
def fake_mx() -> Iterator[Callable[..., FakeMx]]:
    """Factory: `fake_mx(host=None, port=0, tls_context=None, **MxScript fields)` starts a
    FakeMx (stopped after); see support/fake_mx.py for the faults an address asks for."""
    started: list[FakeMx] = []

    def make(host: str | None = None, port: int = 0, **options: Any) -> FakeMx:
        mx = FakeMx(host, port, **options).start()
        started.append(mx)
        return mx

    try:
        yield make
    finally:
        for mx in started:
            mx.stop()


@pytest.fixture
def smtp_sink() -> Iterator[Callable[..., SmtpSink]]:
    """Factory: `smtp_sink(host=None, port=0, extra_args=[...], dump=True)` starts smtp-sink."""
    started: list[SmtpSink] = []

    def make(
        host: str | None = None,
        port: int = 0,
        extra_args: list[str] | None = None,
        dump: bool = False,
    ) -> SmtpSink:
        sink = SmtpSink(host, port, extra_args, dump).start()
        started.append(sink)
        return sink

    try:
        yield make
    finally:
        for sink in started:
            sink.cleanup()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Async tests run on the services' event loop (mailsluice.eventloop)."""
    return {"uvloop": uvloop.new_event_loop}
