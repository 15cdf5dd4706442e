"""The ingest end to end: real SMTP on loopback, the real broker, the test DNS server."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

import pytest
from support.eventually import eventually
from support.ingest import (
    RawClient,
    accepts,
    events,
    queue_id_of,
    queued,
    running_ingest,
    smtp_send,
    swaks,
    uid,
)
from support.loopback import free_port

from mailsluice.ingest.service import IngestService
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.suppression.store import add_suppression


def message(subject: str = "hello", body: str = "Hello there.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "sender@client.test"
    msg["To"] = "undisclosed-recipients:;"
    msg["Subject"] = subject
    msg.set_content(body)
    return msg.as_bytes()


async def suppress(settings: KafkaSettings, service: IngestService, address: str) -> None:
    producer = make_producer(settings, max_message_size=1 << 20, client_id="test-suppress")
    await producer.start()
    try:
        await add_suppression(producer, address, reason="test")
    finally:
        await producer.stop()
    await service._store.wait_for(address)


async def test_seed_case_suppressed_recipient_refused_others_queued(
    ingest: IngestService, kafka_settings: KafkaSettings, dns_server
) -> None:
    alpha, beta = f"alpha-{uid()}.test", f"beta-{uid()}.test"
    dns_server.set_mx(alpha, [(10, f"mx.{alpha}")])
    dns_server.set_mx(beta, [(10, f"mx.{beta}")])
    good1, good2, blocked = f"one@{alpha}", f"two@{beta}", f"Blocked@{alpha}"
    await suppress(kafka_settings, ingest, blocked.lower())

    result = await asyncio.to_thread(
        smtp_send, ingest.port, "sender@client.test", [good1, blocked, good2], message("seed")
    )
    assert set(result.refused) == {blocked}
    code, text = result.refused[blocked]
    assert (code, text.decode()) == (550, "5.7.1 Recipient address is suppressed")
    queue_id = queue_id_of(result.data_reply)

    records = await queued(kafka_settings, queue_id, expect=2)
    assert len(records) == 2
    by_key = {r.key: r for r in records}
    assert set(by_key) == {alpha, beta}
    assert by_key[alpha].envelope.recipients == (good1,)
    assert by_key[beta].envelope.recipients == (good2,)
    for record in records:
        env = record.envelope
        assert (env.queue_id, env.pool, env.sender, env.routing_key) == (
            queue_id,
            "default",
            "sender@client.test",
            record.key,
        )
        assert env.user == "trusted:127.0.0.0/8"
        assert record.value.startswith(b"Received: from client.test ([127.0.0.1])\r\n")
        assert b"with ESMTP id " + queue_id.encode() in record.value
        assert b"\r\nMessage-ID: <" + queue_id.encode() + b"@ingest.test>\r\n" in record.value
        assert b"\r\nSubject: seed\r\n" in record.value
        assert b"\n" not in record.value.replace(b"\r\n", b"")

    found = await events(kafka_settings, lambda e: e.queue_id == queue_id, expect=2)
    kinds = sorted((e.type.value, e.recipient, e.reason) for e in found)
    assert kinds == [("reception", "", ""), ("rejection", blocked, "suppressed")]


async def test_recipients_of_one_provider_share_one_record(
    ingest: IngestService, kafka_settings: KafkaSettings, dns_server
) -> None:
    dns_server.set_mx("gmail.com", [(5, "gmail-smtp-in.l.google.com")])
    dns_server.set_mx("googlemail.com", [(5, "gmail-smtp-in.l.google.com")])
    rcpts = [f"a{uid()}@gmail.com", f"b{uid()}@googlemail.com", f"c{uid()}@Gmail.com"]
    result = await asyncio.to_thread(smtp_send, ingest.port, "", rcpts, message())
    assert result.refused == {}
    queue_id = queue_id_of(result.data_reply)
    records = await queued(kafka_settings, queue_id, expect=1)
    assert len(records) == 1
    assert records[0].key == "google"
    assert records[0].envelope.recipients == (
        rcpts[0],
        rcpts[1],
        rcpts[2].replace("Gmail", "gmail"),
    )
    assert records[0].envelope.sender == ""  # the null reverse-path


@pytest.mark.parametrize(
    ("setup", "reply"),
    [
        ("null_mx", (556, "5.1.10 Recipient domain does not accept mail (null MX)")),
        ("nxdomain", (550, "5.1.2 Recipient domain does not exist")),
        ("servfail", (450, "4.4.3 Recipient domain temporarily unresolvable, try again later")),
        ("timeout", (450, "4.4.3 Recipient domain temporarily unresolvable, try again later")),
        ("no_mx_no_address", (550, "5.1.2 Recipient domain does not exist")),
    ],
)
async def test_dns_verdicts(
    ingest: IngestService, kafka_settings: KafkaSettings, dns_server, setup: str, reply
) -> None:
    bad, good = f"{setup.replace('_', '-')}-{uid()}.test", f"good-{uid()}.test"
    dns_server.set_a(good, ["127.0.0.9"])  # implicit MX: accepted
    if setup == "null_mx":
        dns_server.set_null_mx(bad)
    elif setup == "nxdomain":
        dns_server.set_nxdomain(bad)
    elif setup == "servfail":
        dns_server.set_servfail(bad)
    elif setup == "timeout":
        dns_server.set_timeout(bad)
    else:
        dns_server.set_txt(bad, ["exists but has no MX and no address"])
    result = await asyncio.to_thread(
        smtp_send, ingest.port, "s@client.test", [f"x@{bad}", f"y@{good}"], message()
    )
    assert {k: (c, t.decode()) for k, (c, t) in result.refused.items()} == {f"x@{bad}": reply}
    queue_id = queue_id_of(result.data_reply)
    records = await queued(kafka_settings, queue_id, expect=1)
    assert [r.envelope.recipients for r in records] == [(f"y@{good}",)]


async def test_mx_lookups_are_cached_per_domain(ingest: IngestService, dns_server) -> None:
    domain = f"many-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx.{domain}")])
    rcpts = [f"user{i}@{domain}" for i in range(60)]
    result = await asyncio.to_thread(smtp_send, ingest.port, "s@client.test", rcpts, message())
    assert result.refused == {}
    queue_id_of(result.data_reply)
    assert dns_server.query_count(domain, "MX") == 1


@pytest.mark.parametrize(
    ("rcpt", "reply"),
    [
        ("<user%victim.example@relay.test>", "554 5.7.1 Relay access denied"),
        ('<"user@victim.example"@relay.test>', "554 5.7.1 Relay access denied"),
        ("<@hop1.test,@hop2.test:user@victim.example>", "554 5.7.1 Relay access denied"),
        ("<victim.example!user@relay.test>", "554 5.7.1 Relay access denied"),
        ("<user@[127.0.0.1]>", "554 5.7.1 Relay access denied"),
        ("<user@victim.example@relay.test>", "501 5.1.3 Bad recipient address syntax"),
        ("<no-domain>", "501 5.1.3 Bad recipient address syntax"),
        ("<user@localhost>", "501 5.1.3 Bad recipient address syntax"),
    ],
)
async def test_relay_tricks_and_bad_syntax_are_refused(
    ingest: IngestService, kafka_settings: KafkaSettings, rcpt: str, reply: str
) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        assert (await client.cmd("EHLO client.test")).startswith("250-")
        assert (await client.cmd("MAIL FROM:<s@client.test>")).startswith("250 ")
        assert await client.cmd(f"RCPT TO:{rcpt}") == reply
        assert await client.cmd("DATA") == "503 5.5.1 Error: need RCPT command"
        assert await client.cmd("QUIT") == "221 2.0.0 Bye"
    finally:
        await client.close()


@pytest.mark.parametrize(
    "sender", ["<a%b@relay.test>", "<@hop.test:a@b.test>", "<a@b@c.test>", '<"a"@b.test>']
)
async def test_bad_senders_are_refused(ingest: IngestService, sender: str) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        await client.cmd("EHLO client.test")
        assert await client.cmd(f"MAIL FROM:{sender}") == "501 5.1.7 Bad sender address syntax"
    finally:
        await client.close()


async def test_ehlo_advertises_extensions_without_tls_or_auth(ingest: IngestService) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        lines = (await client.cmd("EHLO client.test")).split("\n")
        keywords = [line[4:] for line in lines[1:]]
        assert lines[0] == "250-ingest.test"
        assert f"SIZE {20 * 1024 * 1024}" in keywords
        for word in ("8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES"):
            assert word in keywords
        assert not any(k.startswith(("STARTTLS", "AUTH")) for k in keywords)
        assert await client.cmd("AUTH PLAIN AGJvYgBzZWNyZXQ=") == (
            "538 5.7.11 Encryption required for requested authentication mechanism"
        )
    finally:
        await client.close()


async def test_declared_size_too_big(ingest: IngestService) -> None:
    client = await RawClient.connect(ingest.port)
    try:
        await client.cmd("EHLO client.test")
        reply = await client.cmd(f"MAIL FROM:<s@client.test> SIZE={20 * 1024 * 1024 + 1}")
        assert reply.startswith("552 5.3.4 ")
        assert (await client.cmd("MAIL FROM:<s@client.test> SIZE=1000")).startswith("250 ")
    finally:
        await client.close()


async def test_command_and_text_line_limits(ingest: IngestService, dns_server) -> None:
    domain = f"lines-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx.{domain}")])
    client = await RawClient.connect(ingest.port)
    try:
        await client.cmd("EHLO client.test")
        assert await client.cmd("NOOP " + "x" * 600) == "500 5.5.2 Command line too long"
        assert await client.cmd("NOOP " + "x" * 5000) == "500 5.5.2 Command line too long"
        assert (await client.cmd("MAIL FROM:<s@client.test>")).startswith("250 ")
        assert (await client.cmd(f"RCPT TO:<r@{domain}>")).startswith("250 ")
        assert (await client.cmd("DATA")).startswith("354 ")
        await client.send(b"Subject: long\r\n\r\n" + b"y" * 1001 + b"\r\n.\r\n")
        assert await client.reply() == "500 5.5.2 Line too long"
        # a 998-octet line is fine
        assert (await client.cmd("MAIL FROM:<s@client.test>")).startswith("250 ")
        assert (await client.cmd(f"RCPT TO:<r@{domain}>")).startswith("250 ")
        assert (await client.cmd("DATA")).startswith("354 ")
        await client.send(b"Subject: ok\r\n\r\n" + b"y" * 998 + b"\r\n.\r\n")
        assert (await client.reply()).startswith("250 2.0.0 Ok: queued as ")
    finally:
        await client.close()


async def test_unexpected_errors_answer_451_without_internals(
    ingest: IngestService, dns_server, monkeypatch
) -> None:
    domain = f"boom-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx.{domain}")])
    assert ingest.handler is not None

    def exploding(address: str, scopes: object) -> bool:
        raise RuntimeError("secret internals /etc/passwd")

    async def exploding_publish(records, events=()) -> None:
        raise KeyError("secret internals")

    client = await RawClient.connect(ingest.port)
    try:
        await client.cmd("EHLO client.test")
        await client.cmd("MAIL FROM:<s@client.test>")
        monkeypatch.setattr(ingest.handler, "is_suppressed", exploding)
        assert await client.cmd(f"RCPT TO:<r@{domain}>") == (
            "451 4.3.0 Temporary failure, try again later"
        )
        monkeypatch.undo()
        assert (await client.cmd(f"RCPT TO:<r@{domain}>")).startswith("250 ")
        monkeypatch.setattr(ingest.handler.publisher, "publish", exploding_publish)
        assert (await client.cmd("DATA")).startswith("354 ")
        await client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        assert await client.reply() == "451 4.3.0 Temporary failure, try again later"
    finally:
        await client.close()


async def test_swaks_sends_through_the_ingest(
    ingest: IngestService, kafka_settings: KafkaSettings, dns_server
) -> None:
    domain = f"swaks-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx.{domain}")])
    done = await swaks(
        "--server",
        f"127.0.0.1:{ingest.port}",
        "--from",
        "app@client.test",
        "--to",
        f"someone@{domain}",
        "--header",
        "Subject: via swaks",
        "--pipeline",
        "--helo",
        "swaks.client.test",
    )
    assert done.returncode == 0, done.stdout
    line = next(x for x in done.stdout.splitlines() if "queued as" in x)
    queue_id = line.rsplit(" ", 1)[1]
    records = await queued(kafka_settings, queue_id, expect=1)
    assert records[0].envelope.recipients == (f"someone@{domain}",)
    assert b"Subject: via swaks" in records[0].value


async def test_the_service_process_queues_mail_and_stops_cleanly_on_sigterm(
    kafka_settings: KafkaSettings, dns_server, dns_nameserver, tmp_path
) -> None:
    """`mailsluice ingest` as a process: configured by environment, stopped by SIGTERM."""
    import os
    import signal
    import sys

    domain = f"process-{uid()}.test"
    dns_server.set_mx(domain, [(10, f"mx.{domain}")])
    smtp_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "MAILSLUICE_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
        "MAILSLUICE_DNS_NAMESERVERS": dns_nameserver,
        "MAILSLUICE_INGEST_LISTEN_PORT": str(smtp_port),
        "MAILSLUICE_INGEST_HTTP_PORT": str(http_port),
        "MAILSLUICE_INGEST_HOSTNAME": "process.test",
        "MAILSLUICE_LOG_JSON_FORMAT": "false",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailsluice.cli",
        "ingest",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def listening() -> bool:
            assert proc.returncode is None, "ingest exited early"
            return await accepts(smtp_port)

        await eventually(listening, within=60, interval=0.3, what="ingest listening")
        done = await swaks(
            "--server",
            f"127.0.0.1:{smtp_port}",
            "--from",
            "app@client.test",
            "--to",
            f"someone@{domain}",
            "--helo",
            "swaks.client.test",
        )
        assert done.returncode == 0, done.stdout
        line = next(x for x in done.stdout.splitlines() if "queued as" in x)
        records = await queued(kafka_settings, line.rsplit(" ", 1)[1], expect=1)
        assert len(records) == 1
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()[-2000:]


async def test_domain_checks_off_accepts_domains_missing_from_dns(
    kafka_settings: KafkaSettings, dns_nameserver: str, dns_zone
) -> None:
    # What `make run` uses: every destination goes to the sandbox, so no domain must exist.
    missing = f"nowhere-{uid()}.test"
    dns_zone.set_nxdomain(missing)
    async with running_ingest(kafka_settings, dns_nameserver, verify_domains=False) as service:
        result = await asyncio.to_thread(
            smtp_send, service.port, "sender@client.test", [f"x@{missing}"], message("free")
        )
    assert result.refused == {}
    queue_id = queue_id_of(result.data_reply)
    (record,) = await queued(kafka_settings, queue_id, expect=1)
    assert record.envelope.recipients == (f"x@{missing}",)
    assert dns_zone.query_count(missing) == 0
