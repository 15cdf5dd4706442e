"""The test infrastructure itself: real Kafka, the loopback DNS server, fake MXes, smtp-sink."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dns.asyncresolver
import dns.resolver
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from support.dns_server import DnsServer
from support.fake_mx import R421_GREETING, R451_DATA, FakeMx, SmtpSink
from support.kafka_broker import KafkaBroker, kafka_local

MESSAGE = b"Subject: hello\r\nFrom: a@sender.test\r\nTo: b@example.test\r\n\r\nbody line\r\n"


# ----- Kafka


async def _create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def _consume(bootstrap: str, topic: str, count: int, group: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                got += [r.value for r in records]
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def test_kafka_produce_consume_large_message(kafka: KafkaBroker) -> None:
    topic = f"harness-{uuid.uuid4().hex[:8]}"
    await _create_topic(kafka.bootstrap, topic, partitions=2)
    big = b"x" * (40 * 1024 * 1024)
    producer = AIOKafkaProducer(**kafka.settings().client_options(), max_request_size=45 << 20)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"small", key=b"k")
        await producer.send_and_wait(topic, big, key=b"k")
    finally:
        await producer.stop()
    got = await _consume(kafka.bootstrap, topic, 2, group=f"g-{topic}")
    assert got == [b"small", big]


async def test_kafka_stop_start_keeps_data_and_offsets(kafka: KafkaBroker) -> None:
    topic = f"harness-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    await _create_topic(kafka.bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(topic, f"m{i}".encode())
    finally:
        await producer.stop()
    assert await _consume(kafka.bootstrap, topic, 2, group) == [b"m0", b"m1", b"m2"][:3]
    pid = kafka.pid
    try:
        kafka.stop()
        assert not kafka.running
        assert not kafka_local.broker_ready(kafka.port)
    finally:
        kafka.start()
    assert kafka.pid != pid
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"m3")
    finally:
        await producer.stop()
    # The group's committed offset survived the restart: only the new message is read.
    assert await _consume(kafka.bootstrap, topic, 1, group) == [b"m3"]
    # And all data survived: a new group reads everything.
    assert await _consume(kafka.bootstrap, topic, 4, group + "-new") == [
        b"m0",
        b"m1",
        b"m2",
        b"m3",
    ]


def test_kafka_settings_and_cli_status(kafka: KafkaBroker) -> None:
    settings = kafka.settings(queue_partitions=3)
    assert settings.bootstrap == kafka.bootstrap
    assert settings.queue_partitions == 3
    script = Path(kafka_local.__file__)
    out = subprocess.run(
        [sys.executable, str(script), "status", "--dir", str(kafka.directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert f"bootstrap={kafka.bootstrap} ready=yes" in out.stdout


def test_kafka_left_stopped_by_a_test(kafka: KafkaBroker) -> None:
    kafka.stop()
    assert not kafka.running


def test_kafka_restarted_after_a_test_left_it_stopped(kafka: KafkaBroker) -> None:
    # conftest's autouse fixture started it again after the previous test.
    assert kafka.running
    assert kafka_local.broker_ready(kafka.port)


def test_kafka_cli_status_when_nothing_runs(tmp_path: Path) -> None:
    assert kafka_local.main(["status", "--dir", str(tmp_path)]) == 1
    assert kafka_local.main(["stop", "--dir", str(tmp_path)]) == 0


# ----- DNS


def _resolver(server: DnsServer) -> dns.asyncresolver.Resolver:
    # The same shape as the resolver services/mailsluice/resolver.py builds.
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.nameserver_ports = {server.host: server.port}
    resolver.timeout = 0.5
    resolver.lifetime = 1.5
    return resolver


async def test_dns_mx_a_aaaa(dns_zone: DnsServer) -> None:
    dns_zone.set_mx("example.test", [(20, "mx2.example.test"), (10, "mx1.example.test")])
    dns_zone.set_a("mx1.example.test", ["127.0.0.5", "127.0.0.6"])
    dns_zone.set_aaaa("mx1.example.test", ["::1"])
    r = _resolver(dns_zone)
    mx = await r.resolve("example.test", "MX")
    assert sorted((x.preference, x.exchange.to_text()) for x in mx) == [
        (10, "mx1.example.test."),
        (20, "mx2.example.test."),
    ]
    a = await r.resolve("MX1.Example.Test", "A")
    assert sorted(x.address for x in a) == ["127.0.0.5", "127.0.0.6"]
    aaaa = await r.resolve("mx1.example.test", "AAAA")
    assert [x.address for x in aaaa] == ["::1"]
    assert dns_zone.query_count("example.test", "MX") == 1


async def test_dns_null_mx_and_no_mx(dns_zone: DnsServer) -> None:
    dns_zone.set_null_mx("nomail.test")
    dns_zone.set_a("aonly.test", ["127.0.0.9"])
    r = _resolver(dns_zone)
    null = await r.resolve("nomail.test", "MX")
    assert [(x.preference, x.exchange.to_text()) for x in null] == [(0, ".")]
    with pytest.raises(dns.resolver.NoAnswer):
        await r.resolve("aonly.test", "MX")


async def test_dns_nxdomain_servfail_timeout(dns_zone: DnsServer) -> None:
    dns_zone.set_nxdomain("gone.test")
    dns_zone.set_servfail("broken.test")
    dns_zone.set_timeout("slow.test")
    r = _resolver(dns_zone)
    with pytest.raises(dns.resolver.NXDOMAIN):
        await r.resolve("gone.test", "MX")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await r.resolve("never-configured.test", "MX")
    with pytest.raises(dns.resolver.NoNameservers):  # dnspython's form of SERVFAIL
        await r.resolve("broken.test", "MX")
    with pytest.raises(dns.resolver.LifetimeTimeout):
        await r.resolve("slow.test", "MX")


async def test_dns_large_answer_falls_back_to_tcp(dns_zone: DnsServer) -> None:
    mxes = [(i, f"mx{i}.a-rather-long-mail-exchanger-name.big.test") for i in range(30)]
    dns_zone.set_mx("big.test", mxes)
    answer = await _resolver(dns_zone).resolve("big.test", "MX")
    assert len(answer) == 30
    transports = [t for n, _, t in dns_zone.queries if n == "big.test."]
    assert transports == ["udp", "tcp"]


def test_dns_sync_resolver_and_clear(dns_zone: DnsServer, dns_nameserver: str) -> None:
    host, _, port = dns_nameserver.rpartition(":")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.nameserver_ports = {host: int(port)}
    dns_zone.set_mx("sync.test", [(5, "mx.sync.test")])
    assert resolver.resolve("sync.test", "MX")[0].preference == 5
    dns_zone.clear()
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("sync.test", "MX")


# ----- fake MX


def test_fake_mx_accepts_and_records(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx("127.0.0.21")
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.ehlo("client.test")
        refused = client.sendmail("a@sender.test", ["b@example.test", "c@example.test"], MESSAGE)
        assert refused == {}
    [msg] = mx.wait_for_messages(1)
    assert msg.mail_from == "a@sender.test"
    assert msg.rcpt_tos == ("b@example.test", "c@example.test")
    assert msg.data.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n")
    assert msg.peer[0] == "127.0.0.1"
    assert msg.server == f"127.0.0.21:{mx.port}"
    assert (mx.connections, mx.transactions) == (1, 1)


def test_fake_mx_recipient_rules(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx()
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        assert client.rcpt("defer-1@example.test")[0] == 450
        assert client.rcpt("bounce-1@example.test")[0] == 550
        code, _ = client.rcpt("ok@example.test")
        assert code == 250
        assert client.data(MESSAGE)[0] == 250
    [msg] = mx.wait_for_messages(1)
    assert msg.rcpt_tos == ("ok@example.test",)
    assert [r[:3] for _, r in mx.rcpt_replies] == ["450", "550", "250"]
    assert mx.rcpt_replies[0][1].startswith("450 4.2.0")
    assert mx.rcpt_replies[1][1].startswith("550 5.1.1")


def test_fake_mx_greeting_421(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx(greeting=R421_GREETING)
    with pytest.raises(smtplib.SMTPConnectError) as info:
        smtplib.SMTP(mx.host, mx.port, timeout=10)
    assert info.value.smtp_code == 421
    assert mx.connections == 1
    assert mx.messages == []


def test_fake_mx_451_after_data(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx(data_reply=R451_DATA)
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("a@sender.test", ["b@example.test"], MESSAGE)
        assert info.value.smtp_code == 451
    assert mx.messages == []
    # Scripts change at run time: the next attempt is accepted.
    mx.script.data_reply = None
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.sendmail("a@sender.test", ["b@example.test"], MESSAGE)
    assert len(mx.wait_for_messages(1)) == 1
    assert (mx.connections, mx.transactions) == (2, 2)


def test_fake_mx_slow(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx(delay=0.3)
    began = time.monotonic()
    with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected)):
        smtplib.SMTP(mx.host, mx.port, timeout=0.1)
    with smtplib.SMTP(mx.host, mx.port, timeout=5) as client:
        client.sendmail("a@sender.test", ["b@example.test"], MESSAGE)
    # banner + EHLO + MAIL + RCPT + DATA end: five delayed replies.
    assert time.monotonic() - began >= 1.5


@pytest.mark.parametrize("stage", ["connect", "ehlo", "mail", "rcpt", "data", "dot"])
def test_fake_mx_drop(fake_mx: Callable[..., FakeMx], stage: str) -> None:
    mx = fake_mx(drop_at=stage)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client = smtplib.SMTP(mx.host, mx.port, timeout=10)
        try:
            client.sendmail("a@sender.test", ["b@example.test"], MESSAGE)
        finally:
            client.close()
    assert mx.messages == []
    deadline = time.monotonic() + 5
    while mx.open_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mx.open_connections == 0


async def test_fake_mx_from_async_code(fake_mx: Callable[..., FakeMx]) -> None:
    import aiosmtplib

    mx = fake_mx()
    await aiosmtplib.send(
        MESSAGE,
        sender="a@sender.test",
        recipients=["z@example.test"],
        hostname=mx.host,
        port=mx.port,
        timeout=10,
    )
    [msg] = await mx.messages_arrived(1)
    assert msg.rcpt_tos == ("z@example.test",)


def test_fake_mx_two_on_same_port_different_ips(fake_mx: Callable[..., FakeMx]) -> None:
    first = fake_mx("127.0.0.31")
    second = fake_mx("127.0.0.32", first.port)
    for mx in (first, second):
        with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
            client.sendmail("a@sender.test", [f"to@{mx.host}"], MESSAGE)
    assert first.wait_for_messages(1)[0].rcpt_tos == ("to@127.0.0.31",)
    assert second.wait_for_messages(1)[0].rcpt_tos == ("to@127.0.0.32",)


# ----- smtp-sink


def test_smtp_sink_accepts(smtp_sink: Callable[..., SmtpSink]) -> None:
    sink = smtp_sink("127.0.0.41", dump=True)
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        assert client.sendmail("a@sender.test", ["b@example.test"], MESSAGE) == {}
    deadline = time.monotonic() + 5
    while not sink.dumped_messages() and time.monotonic() < deadline:
        time.sleep(0.05)
    [dumped] = sink.dumped_messages()
    assert b"body line" in dumped
    assert b"b@example.test" in dumped
    pid = sink.pid
    sink.stop()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


def test_smtp_sink_rejects_rcpt(smtp_sink: Callable[..., SmtpSink]) -> None:
    sink = smtp_sink(extra_args=["-r", "rcpt"])
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        assert client.rcpt("b@example.test")[0] // 100 == 4


async def test_dns_and_mx_together(dns_zone: DnsServer, fake_mx: Callable[..., FakeMx]) -> None:
    """What delivery tests do: MX records point at fake MX addresses on loopback."""
    mx = fake_mx()
    dns_zone.set_mx("together.test", [(10, "mx.together.test")])
    dns_zone.set_a("mx.together.test", [mx.host])
    r = _resolver(dns_zone)
    target = (await r.resolve("together.test", "MX"))[0].exchange
    address = (await r.resolve(target, "A"))[0].address
    assert address == mx.host
    await asyncio.to_thread(_send, address, mx.port)
    assert len(await mx.messages_arrived(1)) == 1


def _send(host: str, port: int) -> None:
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.sendmail("a@sender.test", ["b@together.test"], MESSAGE)
