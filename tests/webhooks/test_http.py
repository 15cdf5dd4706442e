"""One POST against a real aiohttp receiver on 127.0.0.1: signed headers arrive as sent; the
SSRF check refuses loopback (by IP literal and by name) unless allowed, before any connection;
redirects are failures; Retry-After is read; a closed port is a failure to retry."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence

import pytest
from aiohttp import web
from support.webhook_receiver import Receiver

from mailsluice.webhooks.http import open_session, post
from mailsluice.webhooks.outcomes import Result
from mailsluice.webhooks.signing import sign_headers
from mailsluice.webhooks.ssrf import Network, parse_networks

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
LOOPBACK = parse_networks("127.0.0.0/8")
BODY = b'{"a":1}'


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = await Receiver().start()
    try:
        yield running
    finally:
        await running.stop()


async def send(url: str, allowed: Sequence[Network] = LOOPBACK) -> Result:
    async with open_session(allowed, 4) as session:
        headers = sign_headers([SECRET], "msg_one", 1000, BODY)
        return await post(session, url, headers, BODY, allowed=allowed, timeout_s=5)


async def test_a_signed_post_arrives_and_a_2xx_is_delivered(receiver: Receiver) -> None:
    result = await send(receiver.url)
    assert result.ok and result.status == 200
    (got,) = receiver.received
    assert got.body == BODY and got.headers["Content-Type"] == "application/json"
    assert got.headers["webhook-id"] == "msg_one"
    assert got.headers["webhook-timestamp"] == "1000"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_loopback_is_refused_unless_allowed_and_nothing_connects(
    receiver: Receiver, host: str
) -> None:
    result = await send(f"http://{host}:{receiver.port}/hook", allowed=[])
    assert result.permanent and not result.ok
    assert "loopback" in result.error
    assert receiver.received == []


async def test_a_redirect_is_a_failure_and_not_followed() -> None:
    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def elsewhere(_: web.Request) -> web.Response:
        raise AssertionError("followed a redirect")

    app = web.Application()
    app.router.add_post("/", moved)
    app.router.add_post("/elsewhere", elsewhere)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        result = await send(f"http://127.0.0.1:{port}/")
    finally:
        await runner.cleanup()
    assert (result.ok, result.status, result.permanent) == (False, 302, False)


async def test_an_error_answer_carries_its_status_and_retry_after(receiver: Receiver) -> None:
    receiver.status = 503
    receiver.headers = {"Retry-After": "120"}
    result = await send(receiver.url)
    assert (result.ok, result.status, result.retry_after_s) == (False, 503, 120)
    assert "HTTP 503" in result.error


async def test_a_closed_port_is_a_failure_to_retry(receiver: Receiver) -> None:
    await receiver.stop()
    result = await send(receiver.url)
    assert not result.ok and not result.permanent
    assert result.status == 0 and result.error
