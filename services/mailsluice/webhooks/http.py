"""The POST of one batch, with the SSRF check where the connection is made.

aiohttp connects to what its resolver returns, so a resolver that checks every address
(ssrf.py) and raises when any is refused means no connection is ever made to an unchecked
address, DNS rebinding included (each connection resolves through it; the connector's DNS
cache holds only checked answers). A URL whose host is an IP literal skips resolvers in
aiohttp, so it is checked before the request. Redirects are not followed (a 3xx is a failure,
Standard Webhooks), and proxies from the environment are not used.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from mailsluice.webhooks.outcomes import Result
from mailsluice.webhooks.ssrf import Network, Refused, check

USER_AGENT = "Mailsluice-Webhooks/1"
# Bytes of an answer read (and then dropped): enough for an error text in the status.
ANSWER_BYTES = 1024


class GuardedResolver(AbstractResolver):
    """Resolves with `inner` and refuses the whole answer when any address is refused."""

    def __init__(self, allowed: Sequence[Network], inner: AbstractResolver | None = None) -> None:
        self._allowed = list(allowed)
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for entry in found:
            check(entry["host"], self._allowed)
        return found

    async def close(self) -> None:
        await self._inner.close()


def open_session(allowed: Sequence[Network], max_in_flight: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(allowed), limit=max_in_flight, ttl_dns_cache=60
    )
    return aiohttp.ClientSession(connector=connector, trust_env=False)


def _literal_host(url: URL) -> str | None:
    host = url.host or ""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return None
    return host


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return max(0.0, float(headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0  # an HTTP date: the schedule's delay is used


async def post(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    allowed: Sequence[Network],
    timeout_s: float,
) -> Result:
    """POST `body`; what came of it (never raises for what the endpoint or network does)."""
    try:
        target = URL(url)
        literal = _literal_host(target)
        if literal is not None:
            check(literal, allowed)
        sent: dict[str, Any] = {
            "data": body,
            "headers": {**headers, "Content-Type": "application/json", "User-Agent": USER_AGENT},
            "allow_redirects": False,
            "timeout": aiohttp.ClientTimeout(total=timeout_s),
        }
        async with session.post(target, **sent) as resp:
            answer = await resp.content.read(ANSWER_BYTES)
            if 200 <= resp.status < 300:
                return Result(True, resp.status)
            text = answer.decode("utf-8", "replace").strip()[:200]
            error = f"HTTP {resp.status}" + (f": {text}" if text else "")
            return Result(False, resp.status, error, retry_after_s=_retry_after(resp.headers))
    except Refused as exc:
        return Result(False, error=f"address refused: {exc}", permanent=True)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        return Result(False, error=f"{type(exc).__name__}: {exc}"[:300])
