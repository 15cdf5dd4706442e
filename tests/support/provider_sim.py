"""Mail providers over real SMTP: one aiosmtpd server per provider, each on its own 127.0.0.x
address and port, serving a ProviderModel (support/provider_model.py) on a real monotonic
clock. The source a provider counts is the peer's IP, so senders bound to 127.0.0.21 and
127.0.0.22 have their own buckets, connections and blocks.

    sim = ProviderSim([
        ProviderSpec("google", ProviderLimits(rate_per_min=600, burst=20, connections=10,
                                              per_connection=50)),
        ProviderSpec("isp-a", ProviderLimits(...), kind="isp", latency_s=0.05),
    ])
    with sim:                               # all servers up, on one loop in a background thread
        sim.routes({"gmail.com": "google", "isp-a.test": "isp-a"})   # static routes to them
        ...send...
        sim.wait_for_accepted(3000, timeout=1800)   # or: await sim.accepted_arrived(...)
        sim.accepted                        # Accepted(at, source, provider, recipient) in order
        sim.refusals                        # Refusal(at, source, provider, phase, kind, reply)
        for row in sim.summary(sources=2): print(row)

What each server answers comes from its model: the connections or block reply instead of the
greeting (then it closes), the block or per-connection reply at MAIL, the rate reply at RCPT or
at the end of DATA (a token per RCPT when the limit is at RCPT, per message at DATA). After any
421 the server closes the connection, as RFC 5321 says it does. `latency_s` delays each reply
to the end of DATA, as a real server's processing does.

aiosmtpd has no hook before its greeting: a plain asyncio protocol takes each connection, asks
the model, and either refuses it or hands the transport to aiosmtpd's SMTP (`set_protocol`,
then `connection_made`, as aiosmtpd itself does at STARTTLS); only documented parts of aiosmtpd
are used (handler hooks, `push`, `transport`, `connection_lost`).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, Envelope, Session

from support.eventually import eventually, eventually_sync
from support.loop_thread import LoopThread
from support.loopback import free_port, next_loopback
from support.provider_model import (
    PROVIDERS,
    ProviderLimits,
    ProviderModel,
    ProviderTexts,
    Reply,
    SourceStats,
)

Phase = Literal["connect", "mail", "rcpt", "data"]
Kind = Literal["rate", "connections", "per_connection", "block"]
KINDS: tuple[Kind, ...] = ("rate", "connections", "per_connection", "block")


@dataclass(frozen=True)
class ProviderSpec:
    name: str  # the server's name in records and the summary ("google", "isp-a")
    limits: ProviderLimits
    texts: ProviderTexts | None = None  # None: the usual texts of `kind`
    kind: str | None = None  # a key of PROVIDERS (None: `name`)
    host: str | None = None  # None: a fresh 127.0.0.x
    port: int = 0  # 0: a free port
    latency_s: float = 0.0  # before each reply to the end of DATA
    tls_context: ssl.SSLContext | None = None  # offer STARTTLS with it

    def provider_texts(self) -> ProviderTexts:
        return self.texts or PROVIDERS[self.kind or self.name][0]


@dataclass(frozen=True)
class Accepted:
    at: float  # the simulator's clock (time.monotonic by default)
    source: str
    provider: str
    recipient: str


@dataclass(frozen=True)
class Refusal:
    at: float
    source: str
    provider: str
    phase: Phase
    kind: Kind
    reply: Reply


@dataclass(frozen=True)
class ProviderSummary:
    """One provider's delivery, for the bench table ("overall": every provider together)."""

    provider: str
    delivered: int  # recipients accepted
    span_s: float  # first to last accepted
    ideal_s: float  # the same messages at the limits (ProviderModel.ideal_seconds)
    attempts: int  # messages that asked for a token
    deferred: int  # of which deferred with the rate reply
    blocks: int
    refusals: int  # greetings and MAIL commands refused (connections, per-connection, block)

    @property
    def efficiency(self) -> float:
        """Ideal span over actual span (1.0 when everything went at once)."""
        return self.ideal_s / self.span_s if self.span_s > 0 else 1.0

    @property
    def deferral_pct(self) -> float:
        return 100.0 * self.deferred / self.attempts if self.attempts else 0.0


class _ProviderSMTP(SMTP):
    """aiosmtpd's SMTP for one accepted connection from `source`."""

    def __init__(self, provider: ProviderServer, source: str, **kwargs: Any) -> None:
        self.provider = provider
        self.source = source
        self.transactions = 0  # MAIL commands accepted on this connection
        super().__init__(provider, **kwargs)

    async def push(self, status: Any) -> None:
        await super().push(status)
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text.startswith("421") and self.transport is not None:
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        self.provider._closed(self)
        super().connection_lost(error)


class _Gate(asyncio.Protocol):
    """Takes a connection first: refuses it with the model's reply, or hands it to SMTP."""

    def __init__(self, provider: ProviderServer) -> None:
        self.provider = provider

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        source = str(transport.get_extra_info("peername")[0])
        smtp = self.provider._open(source)
        if isinstance(smtp, Reply):
            transport.write(smtp.line.encode() + b"\r\n")
            transport.close()
            return
        transport.set_protocol(smtp)
        smtp.connection_made(transport)


class ProviderServer:
    """One provider: its model, its address, and the aiosmtpd handler hooks."""

    def __init__(self, sim: ProviderSim, spec: ProviderSpec) -> None:
        self.sim = sim
        self.spec = spec
        self.name = spec.name
        self.texts = spec.provider_texts()
        self.model = ProviderModel(spec.limits, self.texts)
        self.host = spec.host or next_loopback()
        self.port = spec.port or free_port(self.host)
        self.connections = 0  # connections accepted (greeted)
        self._live: set[_ProviderSMTP] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        with self.sim._lock:
            return len(self._live)

    def open_from(self, source: str) -> int:
        """Connections open from `source` now, as the model counts them."""
        with self.sim._lock:
            return self.model.open_connections(source)

    def block(self, source: str, seconds: float) -> None:
        with self.sim._lock:
            self.model.block(source, self.sim.clock(), seconds)

    def blocked(self, source: str) -> bool:
        with self.sim._lock:
            return self.model.blocked(source, self.sim.clock())

    def stats(self, source: str | None = None) -> SourceStats:
        with self.sim._lock:
            return self.model.stats(source)

    # ----- on the simulator's loop

    async def serve(self, loop: asyncio.AbstractEventLoop) -> None:
        self._server = await loop.create_server(
            lambda: _Gate(self), self.host, self.port, reuse_address=True
        )

    async def shut(self) -> None:
        if self._server is not None:
            self._server.close()
        for smtp in list(self._live):
            if isinstance(smtp.transport, asyncio.WriteTransport):
                smtp.transport.abort()
        await eventually(lambda: not self._live, within=5, what=f"{self.name}'s connections")
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _open(self, source: str) -> _ProviderSMTP | Reply:
        reply = self._ask(source, "connect", lambda now: self.model.connect(source, now))
        if not reply.ok:
            return reply
        smtp = _ProviderSMTP(
            self,
            source,
            hostname=f"mx.{self.name}.test",
            ident="ProviderSim",
            data_size_limit=64 * 1024 * 1024,
            enable_SMTPUTF8=True,
            tls_context=self.spec.tls_context,
            timeout=60,
            loop=self.sim._thread.loop,
        )
        with self.sim._lock:
            self._live.add(smtp)
            self.connections += 1
        return smtp

    def _closed(self, smtp: _ProviderSMTP) -> None:
        with self.sim._lock:
            if smtp in self._live:
                self._live.discard(smtp)
                self.model.disconnect(smtp.source, self.sim.clock())

    def _ask(self, source: str, phase: Phase, question: Callable[[float], Reply]) -> Reply:
        with self.sim._lock:
            now = self.sim.clock()
            reply = question(now)
            if not reply.ok:
                kind = next(k for k in KINDS if getattr(self.texts, k).for_source(source) == reply)
                self.sim._refusals.append(Refusal(now, source, self.name, phase, kind, reply))
        return reply

    # ----- aiosmtpd handler hooks

    async def handle_MAIL(
        self,
        server: _ProviderSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        source, sent = server.source, server.transactions
        reply = self._ask(source, "mail", lambda now: self.model.mail(source, sent, now))
        if reply.ok:
            server.transactions += 1
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return reply.line

    async def handle_RCPT(
        self,
        server: _ProviderSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        source = server.source
        reply = self._ask(source, "rcpt", lambda now: self.model.rcpt(source, now))
        if reply.ok:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply.line

    async def handle_DATA(self, server: _ProviderSMTP, session: Session, envelope: Envelope) -> str:
        source = server.source
        reply = self._ask(source, "data", lambda now: self.model.data(source, now))
        if reply.ok:
            with self.sim._lock:
                now = self.sim.clock()
                self.sim._accepted.extend(
                    Accepted(now, source, self.name, rcpt) for rcpt in envelope.rcpt_tos
                )
        if self.spec.latency_s:
            await asyncio.sleep(self.spec.latency_s)  # a server's processing time, simulated
        return reply.line


class ProviderSim:
    """Several providers' SMTP servers on one event loop in a background thread."""

    def __init__(
        self, specs: Iterable[ProviderSpec], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self._accepted: list[Accepted] = []
        self._refusals: list[Refusal] = []
        self.servers: dict[str, ProviderServer] = {}
        for spec in specs:
            if spec.name in self.servers:
                raise ValueError(f"two providers named {spec.name!r}")
            self.servers[spec.name] = ProviderServer(self, spec)
        self._thread = LoopThread("provider-sim")

    def server(self, name: str) -> ProviderServer:
        return self.servers[name]

    def routes(self, domains: Mapping[str, str]) -> str:
        """Static routes (MAILSLUICE_OUTBOUND_STATIC_ROUTES) from recipient domain to the
        server of the provider named for it: {"gmail.com": "google"} ->
        "gmail.com=127.0.0.x:port"."""
        return ",".join(
            f"{domain}={self.servers[name].address}" for domain, name in domains.items()
        )

    @property
    def accepted(self) -> list[Accepted]:
        with self._lock:
            return list(self._accepted)

    @property
    def refusals(self) -> list[Refusal]:
        with self._lock:
            return list(self._refusals)

    # ----- lifecycle

    def start(self) -> ProviderSim:
        async def serve(loop: asyncio.AbstractEventLoop) -> None:
            for server in self.servers.values():
                await server.serve(loop)

        self._thread.start(serve)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            for server in self.servers.values():
                await server.shut()

        self._thread.stop(shutdown)

    def __enter__(self) -> ProviderSim:
        return self if self._thread.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- waiting

    def wait_for_accepted(self, count: int, timeout: float = 30.0) -> list[Accepted]:
        """Block until `count` recipients were accepted in all; return them."""
        eventually_sync(
            lambda: len(self._accepted) >= count,
            within=timeout,
            what=f"{count} accepted recipients",
            detail=lambda: f"{len(self._accepted)} accepted",
        )
        return self.accepted

    async def accepted_arrived(self, count: int, within: float = 30.0) -> list[Accepted]:
        await eventually(
            lambda: len(self._accepted) >= count,
            within=within,
            what=f"{count} accepted recipients",
            detail=lambda: f"{len(self._accepted)} accepted",
        )
        return self.accepted

    # ----- the bench table

    def summary(self, sources: int | None = None) -> list[ProviderSummary]:
        """One row per provider, then "overall" (its ideal: the slowest provider's, as they
        run side by side). `sources`: the sender's addresses (None: those each provider saw)."""
        accepted = self.accepted
        rows = []
        for name, server in self.servers.items():
            mine = [a for a in accepted if a.provider == name]
            stats = server.stats()
            seen = len({a.source for a in mine}) or 1
            ideal = server.model.ideal_seconds(stats.accepted, sources or seen)
            rows.append(_row(name, mine, ideal, stats))
        total = sum((server.stats() for server in self.servers.values()), SourceStats())
        slowest = max((row.ideal_s for row in rows), default=0.0)
        return [*rows, _row("overall", accepted, slowest, total)]


def _row(name: str, accepted: list[Accepted], ideal: float, stats: SourceStats) -> ProviderSummary:
    times = [a.at for a in accepted]
    return ProviderSummary(
        provider=name,
        delivered=len(accepted),
        span_s=max(times) - min(times) if times else 0.0,
        ideal_s=ideal,
        attempts=stats.attempts,
        deferred=stats.deferred,
        blocks=stats.blocks,
        refusals=stats.refused_connections + stats.per_connection + stats.block_replies,
    )
