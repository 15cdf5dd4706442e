"""The test infrastructure itself: real Kafka, the loopback DNS server, fake MXes, smtp-sink."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
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
from support.eventually import eventually, eventually_sync
from support.fake_mx import R421_GREETING, R451_DATA, FakeMx, SmtpSink
from support.kafka_broker import KafkaBroker, kafka_local, kafka_local_cli
from support.tls import server_context, trusting_client_context

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
    """At least `count` records of `topic` for `group` (what one fetch returns beyond that
    too), then commit."""
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

    async def fetched() -> bool:
        batches = await consumer.getmany(timeout_ms=1000)
        for records in batches.values():
            got.extend(r.value for r in records)
        return len(got) >= count

    try:
        await eventually(
            fetched,
            within=60,
            interval=0,
            what=f"{count} records of {topic}",
            detail=lambda: f"{len(got)} read",
        )
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
    out = kafka_local_cli("status", "--dir", str(kafka.directory))
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
    assert msg.tls is False
    assert (mx.connections, mx.transactions) == (1, 1)


@pytest.mark.parametrize(
    ("local", "reply"),
    [
        ("tempfail", "450 4.2.0 Mailbox temporarily unavailable"),
        ("TempFail+3", "450 4.2.0 Mailbox temporarily unavailable"),
        ("permfail+x.y", "550 5.1.1 No such user here"),
        ("rcpt-452", "452 4.5.3 Too many recipients"),
        ("rcpt-554-5.7.26", "554 5.7.26 Rejected by policy"),
        ("rcpt-503", "503 5.0.0 Fault asked for by the address"),
        ("data-451", "250 2.1.5 Ok"),
        ("slow-0.01", "250 2.1.5 Ok"),
        # Near misses are ordinary addresses.
        ("tempfailure", "250 2.1.5 Ok"),
        ("x+tempfail", "250 2.1.5 Ok"),
        ("rcpt-45", "250 2.1.5 Ok"),
        ("slow-abc", "250 2.1.5 Ok"),
    ],
)
def test_fake_mx_rcpt_faults_by_address(
    fake_mx: Callable[..., FakeMx], local: str, reply: str
) -> None:
    mx = fake_mx()
    rcpt = f"{local}@example.test"
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        code, text = client.rcpt(rcpt)
        assert f"{code} {text.decode()}" == reply
        assert client.rcpt("ok@example.test")[0] == 250  # the connection goes on
    assert mx.rcpt_replies == [(rcpt, reply), ("ok@example.test", "250 2.1.5 Ok")]


def test_fake_mx_recipient_rules(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx()
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        refused = client.sendmail(
            "a@sender.test",
            ["tempfail+1@example.test", "permfail+1@example.test", "ok@example.test"],
            MESSAGE,
        )
    assert {r: code for r, (code, _) in refused.items()} == {
        "tempfail+1@example.test": 450,
        "permfail+1@example.test": 550,
    }
    [msg] = mx.wait_for_messages(1)
    assert msg.rcpt_tos == ("ok@example.test",)  # only the accepted recipient
    assert [r[:9] for _, r in mx.rcpt_replies] == ["450 4.2.0", "550 5.1.1", "250 2.1.5"]


def test_fake_mx_defer_421_answers_then_closes(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx()
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        code, text = client.rcpt("defer-421@example.test")
        assert (code, text) == (421, b"4.7.0 Too many errors, closing connection")
        eventually_sync(
            lambda: mx.open_connections == 0, within=5, what="the server to close the connection"
        )
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.rcpt("ok@example.test")
    assert not mx.sessions[0].open
    assert mx.messages == []


def test_fake_mx_drop_by_address_closes_without_a_reply(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx()
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.rcpt("drop+2@example.test")
    assert mx.rcpt_replies == []
    assert mx.sessions[0].commands() == ["EHLO", "MAIL", "RCPT"]


def test_fake_mx_slow_by_address(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx()
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        client.sock.settimeout(0.1)  # shorter than what the address asks for
        with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected)):
            client.rcpt("slow-0.5@example.test")
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        began = time.monotonic()
        assert client.rcpt("slow-0.3+b@example.test")[0] == 250
        assert time.monotonic() - began >= 0.3


@pytest.mark.parametrize(
    ("local", "code", "text"),
    [
        ("data-451", 451, b"4.3.0 Local error in processing, try again later"),
        ("data-552-5.2.3+big", 552, b"5.2.3 Mailbox full"),
    ],
)
def test_fake_mx_data_faults_by_address(
    fake_mx: Callable[..., FakeMx], local: str, code: int, text: bytes
) -> None:
    mx = fake_mx()
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("a@sender.test", ["ok@example.test", f"{local}@example.test"], MESSAGE)
        assert (info.value.smtp_code, info.value.smtp_error) == (code, text)
        # the next transaction without it is accepted
        client.sendmail("a@sender.test", ["ok@example.test"], MESSAGE)
    [msg] = mx.wait_for_messages(1)
    assert msg.rcpt_tos == ("ok@example.test",)


def test_fake_mx_script_reply_wins_over_the_address(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx(rcpt_reply=lambda a: "421 4.7.0 Go away" if a.startswith("two") else None)
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@sender.test")
        assert client.rcpt("two@example.test")[0] == 421
        assert client.rcpt("permfail@example.test")[0] == 550  # None: the address decides


def test_fake_mx_records_the_exact_bytes(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx()
    body = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\nend"
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.sendmail("a@sender.test", ["b@example.test"], body)
        client.sendmail("a@sender.test", ["c@example.test"], b"")
    [session] = mx.sessions
    assert session.commands() == ["EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA", "QUIT"]
    first, second = session.data_phases()
    # smtplib dot-stuffs and terminates; the server recorded it before un-stuffing
    assert first == b"Subject: dots\r\n\r\n..leading dot\r\n...two\r\nend\r\n.\r\n"
    assert second == b"\r\n.\r\n"  # an empty body
    assert bytes(session.wire).startswith(b"ehlo ")
    assert bytes(session.wire).endswith(b"QUIT\r\n")
    assert mx.wait_for_messages(2)[0].data == body + b"\r\n"  # un-stuffed again


def test_fake_mx_greeting_421(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx(greeting=R421_GREETING)
    with pytest.raises(smtplib.SMTPConnectError) as info:
        smtplib.SMTP(mx.host, mx.port, timeout=10)
    assert info.value.smtp_code == 421
    assert mx.connections == 1
    assert mx.messages == []


def test_fake_mx_silent_accepts_and_never_greets(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx(silent=True)
    with socket.create_connection((mx.host, mx.port), timeout=0.2) as sock:
        with pytest.raises(TimeoutError):
            sock.recv(100)  # no banner
        sock.sendall(b"EHLO client.test\r\n")
        eventually_sync(lambda: mx.sessions[0].wire, within=5, what="the server to read")
        assert mx.open_connections == 1
    eventually_sync(lambda: mx.open_connections == 0, within=5, what="the client's close seen")
    assert bytes(mx.sessions[0].wire) == b"EHLO client.test\r\n"


def test_fake_mx_helo_only(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx(ehlo=False)
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        assert client.ehlo("client.test")[0] == 502
        assert client.helo("client.test")[0] == 250
        client.sendmail("a@sender.test", ["b@example.test"], MESSAGE)
    assert mx.sessions[0].commands()[:4] == ["EHLO", "HELO", "MAIL", "RCPT"]
    assert len(mx.wait_for_messages(1)) == 1


def test_fake_mx_real_starttls(fake_mx: Callable[..., FakeMx], tmp_path: Path) -> None:
    mx = fake_mx(tls_context=server_context(tmp_path, "mx.tls.test"))
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.starttls(context=trusting_client_context())
        client.sendmail("a@sender.test", ["b@example.test"], MESSAGE)
    [msg] = mx.wait_for_messages(1)
    assert msg.tls is True
    # after the handshake the record goes on with the decrypted commands
    assert mx.sessions[0].commands() == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"]


def test_fake_mx_broken_tls(fake_mx: Callable[..., FakeMx]) -> None:
    mx = fake_mx(broken_tls=True)
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        with pytest.raises((ssl.SSLError, OSError)):
            client.starttls()
    assert mx.sessions[0].commands() == ["EHLO", "STARTTLS"]
    # plaintext still works
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.sendmail("a@sender.test", ["b@example.test"], MESSAGE)
    assert len(mx.wait_for_messages(1)) == 1


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
    eventually_sync(lambda: mx.open_connections == 0, within=5, what="the dropped connection")


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
    [dumped] = eventually_sync(sink.dumped_messages, within=5, what="smtp-sink's dump file")
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
