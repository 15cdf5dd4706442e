"""The sandbox MX: mail sent with smtplib comes back through the Mailpit-shaped HTTP API."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest
from support.eventually import eventually_sync
from support.fake_mx import free_port
from support.processes import get

from mailsluice.sandbox.server import Sandbox
from mailsluice.sandbox.settings import SandboxSettings
from mailsluice.sandbox.store import MessageStore


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    box = await Sandbox(SandboxSettings(smtp_port=0, http_port=0, max_messages=5)).start()
    try:
        yield box
    finally:
        await box.stop()


def send(box: Sandbox, msg: EmailMessage, rcpts: list[str] | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", box.smtp_port, timeout=10) as client:
        client.send_message(msg, to_addrs=rcpts)


def message(subject: str, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "Alice Sender <alice@sender.test>")
    msg["To"] = headers.pop("To", "Bob <bob@example.test>")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@sender.test>"
    msg.set_content(f"Body of {subject}.\n")
    return msg


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_send_and_read_back(sandbox: Sandbox) -> None:
    msg = message("first", Cc="Carol <carol@example.test>")
    await asyncio.to_thread(
        send, sandbox, msg, ["bob@example.test", "carol@example.test", "hidden@example.test"]
    )
    base = sandbox.http_url
    async with aiohttp.ClientSession() as session:
        listing = await get_json(session, f"{base}/api/v1/messages")
        assert listing["total"] == 1 and listing["count"] == 1 and listing["start"] == 0
        (m,) = listing["messages"]
        assert m["From"] == {"Name": "Alice Sender", "Address": "alice@sender.test"}
        assert m["To"] == [{"Name": "Bob", "Address": "bob@example.test"}]
        assert m["Cc"] == [{"Name": "Carol", "Address": "carol@example.test"}]
        assert m["Bcc"] == [{"Name": "", "Address": "hidden@example.test"}]
        assert m["Subject"] == "first"
        assert m["MessageID"] == "first@sender.test"
        assert m["Created"].endswith("Z") and "T" in m["Created"]
        assert m["Size"] > 0
        async with session.get(f"{base}/api/v1/message/{m['ID']}/raw") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            raw = await resp.read()
        assert b"Subject: first" in raw and b"Body of first." in raw
        assert len(raw) == m["Size"]
        full = await get_json(session, f"{base}/api/v1/message/{m['ID']}")
        assert full["Text"].strip() == "Body of first."
        async with session.get(f"{base}/api/v1/message/nope/raw") as resp:
            assert resp.status == 404
        health = await get_json(session, f"{base}/healthz")
        assert health == {"status": "ok", "messages": 1}


async def test_newest_first_paging_bound_and_delete(sandbox: Sandbox) -> None:
    for i in range(7):
        await asyncio.to_thread(send, sandbox, message(f"m{i}"))
    base = sandbox.http_url
    async with aiohttp.ClientSession() as session:
        listing = await get_json(session, f"{base}/api/v1/messages")
        # Bounded at 5: the two oldest are gone; newest first.
        assert listing["total"] == 5
        assert [m["Subject"] for m in listing["messages"]] == ["m6", "m5", "m4", "m3", "m2"]
        page = await get_json(session, f"{base}/api/v1/messages?start=1&limit=2")
        assert [m["Subject"] for m in page["messages"]] == ["m5", "m4"]
        assert (page["total"], page["count"], page["start"]) == (5, 2, 1)
        async with session.get(f"{base}/api/v1/messages?limit=x") as resp:
            assert resp.status == 400
        first = listing["messages"][0]["ID"]
        async with session.delete(f"{base}/api/v1/messages", json={"IDs": [first]}) as resp:
            assert resp.status == 200
        assert (await get_json(session, f"{base}/api/v1/messages"))["total"] == 4
        async with session.delete(f"{base}/api/v1/messages") as resp:
            assert resp.status == 200
        assert (await get_json(session, f"{base}/api/v1/messages"))["total"] == 0


async def test_accepts_null_sender_and_8bit(sandbox: Sandbox) -> None:
    raw = "From: x@y.test\r\nTo: z@example.test\r\nSubject: ü\r\n\r\nGrüße\r\n".encode()

    def go() -> None:
        with smtplib.SMTP("127.0.0.1", sandbox.smtp_port, timeout=10) as client:
            client.sendmail("", ["z@example.test"], raw)

    await asyncio.to_thread(go)
    (item,) = sandbox.store.all()
    assert item.mail_from in {"<>", ""}
    assert item.raw.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")


def test_store_is_bounded_and_thread_safe() -> None:
    store = MessageStore(3)
    ids = [store.add("a@b", ["c@d"], b"x", float(i)).id for i in range(5)]
    assert len(store) == 3
    assert store.get(ids[0]) is None and store.get(ids[4]) is not None
    assert store.delete([ids[4], "missing"]) == [ids[4]]
    assert len(store.delete()) == 2


def test_cli_prints_endpoints_and_stops_on_sigint() -> None:
    smtp_port, http_port = free_port(), free_port()
    env = {**os.environ, "MAILSLUICE_SANDBOX_HTTP_PORT": str(http_port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailsluice.cli", "sandbox", "--smtp-port", str(smtp_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"smtp://127.0.0.1:{smtp_port}" in first
        assert f"http://127.0.0.1:{http_port}/api/v1/messages" in proc.stdout.readline()
        eventually_sync(
            lambda: get(f"http://127.0.0.1:{http_port}/healthz")[0] == 200,
            within=10,
            what="the sandbox's /healthz",
        )
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "sandbox stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_bad_setting_exits_2() -> None:
    env = {**os.environ, "MAILSLUICE_SANDBOX_SMTP_PORT": "99999"}
    proc = subprocess.run(
        [sys.executable, "-m", "mailsluice.cli", "sandbox"],
        check=False,
        capture_output=True,
        env=env,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "MAILSLUICE_SANDBOX_SMTP_PORT" in proc.stderr


async def test_transport_delivers_into_the_sandbox(sandbox: Sandbox) -> None:
    from mailsluice.contracts.envelope import Envelope
    from mailsluice.delivery.transport.client import Transport
    from mailsluice.delivery.transport.settings import OutboundSettings
    from mailsluice.resolver import DnsSettings, make_resolver

    settings = OutboundSettings(smarthost=sandbox.smtp_address)
    transport = Transport(settings, make_resolver(DnsSettings(nameservers="127.0.0.1:9")))
    env = Envelope(
        queue_id="Q",
        pool="default",
        sender="alice@sender.test",
        recipients=("bob@example.test", "secret@example.test"),
        routing_key="example.test",
        received_at=time.time(),
    )
    raw = b"From: alice@sender.test\nTo: bob@example.test\nSubject: via transport\n\nhi\n.\n"
    try:
        results = await transport.send(env, raw)
    finally:
        await transport.close()
    assert [r.kind for r in results] == ["delivered", "delivered"]
    async with aiohttp.ClientSession() as session:
        listing = await get_json(session, f"{sandbox.http_url}/api/v1/messages")
        (m,) = listing["messages"]
        assert m["Subject"] == "via transport"
        assert m["Bcc"] == [{"Name": "", "Address": "secret@example.test"}]
        async with session.get(f"{sandbox.http_url}/api/v1/message/{m['ID']}/raw") as resp:
            body = await resp.read()
    assert body.endswith(b"\r\nhi\r\n.\r\n")  # the lone "." line survived as content
