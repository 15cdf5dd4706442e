"""The public endpoints of the tracker service (FastAPI).

- `GET /o/{token}` answers a 1x1 transparent GIF that no one caches, and records an `open`.
  A token that does not verify still gets the GIF (a mail never shows a broken image) and is
  only counted.
- `GET /c/{token}` answers 302 to the link's target, sealed inside the token (no open
  redirect), and records a `click`. A token that does not verify, or that is not a click's,
  gets 404 as RFC 9457 problem details.
- `HEAD` of either answers the same status and headers and records nothing: no person sends
  a HEAD, link checkers and mail scanners do.

Both answer at once: `record` only hands the event to a bounded buffer that Kafka is fed from.
Each open or click is judged a person's or a machine's (tracking/machines.py) on the way.
"""

from __future__ import annotations

import base64
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from mailsluice.contracts.events import Event, EventType
from mailsluice.metrics.tracker import Tracker as metrics
from mailsluice.tracking.machines import LinkBursts, Machines, judge
from mailsluice.tracking.tokens import Mark, TokenError, TrackingKeys

Record = Callable[[Event], None]  # takes the event without waiting (drops it when full)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
MAX_AGENT = 300
# Neither the pixel nor a redirect is cached (every load or click must reach us), indexed, or
# leaks the token as a referrer.
_HEADERS = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
}


@dataclass(frozen=True)
class Judging:
    """What the tracker judges machines by, and which proxies' X-Forwarded-For it believes."""

    machines: Machines
    too_soon_s: float
    trusted_proxies: tuple[Network, ...] = ()


def trusted_networks(text: str) -> tuple[Network, ...]:
    """The networks of a comma-separated list of addresses and CIDRs."""
    parts = (p.strip() for p in text.split(","))
    return tuple(ipaddress.ip_network(p, strict=False) for p in parts if p)


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(peer: str, forwarded_for: str, trusted: Sequence[Network]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the last
    address of X-Forwarded-For that is not itself a trusted proxy (anything before it the
    client may have written)."""
    address = peer
    if not trusted or not _is_trusted(peer, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        address = hop
        if not _is_trusted(hop, trusted):
            break
    return address


def not_found() -> JSONResponse:
    """The RFC 9457 problem answer to a click link that is not ours."""
    body = {
        "type": "about:blank",
        "title": "Unknown link",
        "status": 404,
        "detail": "This link is not one of ours, or it was changed.",
    }
    return JSONResponse(body, 404, headers=_HEADERS, media_type="application/problem+json")


def pixel() -> Response:
    return Response(PIXEL, media_type="image/gif", headers=_HEADERS)


def event_of(mark: Mark, *, now: float, address: str, agent: str, machine: str) -> Event:
    """The `open` or `click` event of a verified token."""
    return Event(
        type=EventType.OPEN if mark.kind == "open" else EventType.CLICK,
        ts=now,
        queue_id=mark.queue_id,
        pool=mark.pool,
        recipient=mark.recipient,
        routing_key=mark.routing_key,
        tenant=mark.tenant,
        campaign=mark.campaign,
        link=mark.target,
        link_index=mark.link,
        agent=agent[:MAX_AGENT],
        remote=address,
        machine=machine,
        sent_at=float(mark.sent),
    )


def build_app(
    keys: TrackingKeys,
    judging: Judging,
    record: Record,
    *,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    m = judging.machines
    bursts = LinkBursts(m.every_link_links, m.every_link_within_s)

    def verify(token: str, kind: str) -> Mark | None:
        try:
            mark = keys.verify(token)
        except TokenError as exc:
            metrics.REQUESTS.labels(kind, exc.reason).inc()
            return None
        if mark.kind != kind or (kind == "click" and not mark.target.startswith("http")):
            metrics.REQUESTS.labels(kind, "wrong_kind").inc()
            return None
        return mark

    def take(mark: Mark, request: Request) -> None:
        now = clock()
        peer = request.client.host if request.client else ""
        address = client_address(
            peer, request.headers.get("x-forwarded-for", ""), judging.trusted_proxies
        )
        agent = request.headers.get("user-agent", "")
        since = now - mark.sent if mark.sent > 0 else None
        machine = judge(
            m, mark.kind, address, agent, since_sent=since, too_soon_s=judging.too_soon_s
        )
        if mark.kind == "click":
            message = f"{mark.queue_id}|{mark.recipient}"
            if bursts.click(message, mark.link, now) and not machine:
                machine = "every_link"
        if machine:
            metrics.MACHINES.labels(mark.kind, machine).inc()
        metrics.REQUESTS.labels(mark.kind, "ok").inc()
        record(event_of(mark, now=now, address=address, agent=agent, machine=machine))

    @app.get("/o/{token}")
    async def opened(token: str, request: Request) -> Response:
        mark = verify(token, "open")
        if mark is not None:
            take(mark, request)
        return pixel()

    @app.get("/c/{token}")
    async def clicked(token: str, request: Request) -> Response:
        mark = verify(token, "click")
        if mark is None:
            return not_found()
        take(mark, request)
        return RedirectResponse(mark.target, 302, headers=_HEADERS)

    _answer_heads(app, verify)
    return app


def _answer_heads(app: FastAPI, verify: Callable[[str, str], Mark | None]) -> None:
    """HEAD of a pixel or click link: the GET's status and headers, no event."""

    @app.head("/o/{token}")
    async def open_head(token: str) -> Response:
        if verify(token, "open") is not None:
            metrics.REQUESTS.labels("open", "head").inc()
        return pixel()

    @app.head("/c/{token}")
    async def click_head(token: str) -> Response:
        mark = verify(token, "click")
        if mark is None:
            return not_found()
        metrics.REQUESTS.labels("click", "head").inc()
        return RedirectResponse(mark.target, 302, headers=_HEADERS)
