"""`mailsluice ingest`: the SMTP ingest service, its Kafka producer, suppression list and
operator endpoints, all in one event loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mailsluice import eventloop
from mailsluice.config import LogSettings, load, settings_epilog
from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.engagement.store import EngagementStore
from mailsluice.ingest.auth import Credentials
from mailsluice.ingest.auth_guard import AuthGuard, GuardLimits
from mailsluice.ingest.caps import ByteBudget, Caps, Registry
from mailsluice.ingest.handler import IngestHandler
from mailsluice.ingest.plan import PoolPolicy
from mailsluice.ingest.protocol import SessionLimits
from mailsluice.ingest.publish import Publisher
from mailsluice.ingest.quotas import TenantQuotas
from mailsluice.ingest.replies import S220_READY_SUFFIX, S421_SHUTTING_DOWN
from mailsluice.ingest.session import IngestSMTP
from mailsluice.ingest.settings import IngestSettings
from mailsluice.ingest.smtp_auth import SmtpAuth
from mailsluice.ingest.tenants import Accounts
from mailsluice.ingest.unsubscribe import UnsubscribeDesk
from mailsluice.ingest.verdicts import IsSuppressed, MxCache, MxLookup, unverified_mx
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.observability.endpoints import setup_logging, start_http, stop_event
from mailsluice.policy.rollup import load_rollup
from mailsluice.resolver import DnsSettings, lookup_mx, lookup_mx_addresses, make_resolver
from mailsluice.tenancy.quota import QuotaBook
from mailsluice.tenancy.registry import Registry as TenantRegistry
from mailsluice.tenancy.settings import TenancySettings
from mailsluice.tenancy.usage import UsageSharing

log = logging.getLogger(__name__)


def tls_context(settings: IngestSettings) -> ssl.SSLContext | None:
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


def guard_limits(settings: IngestSettings) -> GuardLimits:
    return GuardLimits(
        delay_s=settings.auth_fail_delay_s,
        max_delay_s=settings.auth_fail_delay_max_s,
        max_failures_ip=settings.auth_max_failures_ip,
        max_failures_user=settings.auth_max_failures_user,
        window_s=settings.auth_failure_window_s,
        lockout_s=settings.auth_lockout_s,
    )


def unsubscribe_desk(settings: UnsubscribeSettings) -> UnsubscribeDesk | None:
    """The mailto side of List-Unsubscribe, when a domain for it is configured."""
    if not settings.mailto_domain:
        return None
    keys = settings.key_ring()
    if not keys:
        raise ValueError("MAILSLUICE_UNSUBSCRIBE_MAILTO_DOMAIN is set but no token key is")
    return UnsubscribeDesk(settings.mailto_domain, keys)


class IngestService:
    """Start and stop the whole ingest; tests drive it in their own event loop.

    `is_suppressed` and `mx_lookup` may be injected (tests); by default the service runs a
    SuppressionStore on the suppressions topic and resolves MX through DnsSettings. An
    EngagementStore on the engagement topic grades each message (mailsluice/engagement/).
    """

    _engagement: EngagementStore | None = None  # started by start()

    def __init__(
        self,
        settings: IngestSettings,
        kafka: KafkaSettings,
        dns: DnsSettings,
        *,
        is_suppressed: IsSuppressed | None = None,
        mx_lookup: MxLookup | None = None,
        serve_http: bool = True,
        unsubscribe: UnsubscribeSettings | None = None,
        tenancy: TenancySettings | None = None,
    ) -> None:
        self.settings = settings
        self.unsubscribe = unsubscribe_desk(unsubscribe or load(UnsubscribeSettings))
        self.kafka = kafka
        self.dns = dns
        self.hostname = settings.hostname or socket.getfqdn()
        self.credentials = Credentials(settings.credentials_file, settings.default_pool)
        self.tenancy = tenancy or load(TenancySettings)
        self.tenants = TenantRegistry(self.tenancy.file)
        self.accounts = Accounts(self.credentials, self.tenants)
        self.pools = sorted(set(settings.trusted_pool_list()) | self.accounts.pools())
        self.quota_book = QuotaBook()
        # tenants' quotas hold across every ingest and API replica (tenancy/usage.py)
        self.usage = UsageSharing(self.quota_book, kafka) if self.tenancy.file else None
        self.publisher = Publisher(
            kafka,
            max_message_size=settings.max_message_size,
            publish_timeout_s=settings.publish_timeout_s,
        )
        self._injected_suppressed = is_suppressed
        self._store: Any = None
        if mx_lookup is None and not settings.verify_domains:
            mx_lookup = unverified_mx
        elif mx_lookup is None:
            resolver = make_resolver(dns)
            # The MX hosts' addresses are only needed to refuse non-global destinations.
            lookup = lookup_mx if settings.allow_private_destinations else lookup_mx_addresses
            mx_lookup = lambda domain: lookup(resolver, domain)  # noqa: E731
        self.mx_cache = MxCache(
            mx_lookup,
            max_entries=settings.mx_cache_size,
            max_ttl_s=settings.mx_cache_max_ttl_s,
        )
        self.registry = Registry(
            Caps(
                per_ip=settings.max_connections_per_ip,
                per_trusted_ip=settings.max_connections_per_trusted_ip,
                total=settings.max_connections,
                junk_commands=settings.junk_command_limit,
                aborted_transactions=settings.aborted_transaction_limit,
            ),
            ByteBudget(settings.data_budget_bytes),
        )
        self.registry.budget_wait_s = settings.data_budget_wait_s
        self._serve_http = serve_http
        self._server: asyncio.Server | None = None
        self._http: web.AppRunner | None = None
        self.handler: IngestHandler | None = None

    # --- readiness ----------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self._server is None or self.registry.draining:
            return False, "not serving"
        if not self.publisher.kafka_ok:
            return False, "Kafka unreachable"
        if self._store is not None and not self._store.ready:
            return False, "suppression list not loaded"
        if self._engagement is not None and not self._engagement.ready:
            return False, "engagement not loaded"
        return True, "ok"

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await ensure_topics(
            self.kafka,
            standard_topics(self.kafka, self.pools, self.settings.max_message_size),
        )
        await self.publisher.start()
        if self.usage is not None:
            await self.usage.start()
        is_suppressed = self._injected_suppressed
        if is_suppressed is None:
            from mailsluice.suppression.store import SuppressionStore

            self._store = SuppressionStore(self.kafka, client_id="mailsluice-ingest-suppressions")
            await self._store.start()
            is_suppressed = self._store.suppressed
        engagement = EngagementStore(self.kafka, client_id="mailsluice-ingest-engagement")
        self._engagement = engagement
        await engagement.start()
        s = self.settings
        self.handler = IngestHandler(
            hostname=self.hostname,
            publisher=self.publisher,
            is_suppressed=is_suppressed,
            mx_lookup=self.mx_cache,
            rollup=load_rollup(s.rollup_file or None),
            max_recipients=s.max_recipients,
            pools=PoolPolicy(
                header=s.pool_header,
                default_pool=s.default_pool,
                trusted_pools=frozenset(s.trusted_pool_list()),
                served_pools=frozenset(self.pools),
            ),
            feedback_addresses=s.feedback_address_set(),
            max_message_size=s.max_message_size,
            auth=SmtpAuth(self.accounts, AuthGuard(guard_limits(s))),
            trusted_domains=s.trusted_owned_domains(),
            single_fields=s.single_header_set(),
            allow_private_destinations=s.allow_private_destinations,
            unsubscribe=self.unsubscribe,
            trusted_tenant=s.trusted_tenant,
            quotas=TenantQuotas(self.tenants, self.quota_book) if self.usage else None,
            grade=engagement.grade,
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol_factory(), host=s.listen_host, port=s.listen_port
        )
        if self._serve_http:
            self._http = await start_http(
                s.http_host, s.http_port, self.ready, live=self.publisher.progress.check
            )
        log.info("ingest listening on %s:%d, pools %s", s.listen_host, self.port, self.pools)

    def _protocol_factory(self) -> Callable[[], IngestSMTP]:
        s = self.settings
        handler = self.handler
        assert handler is not None
        limits = SessionLimits(
            max_messages=s.max_messages_per_connection,
            max_errors=s.max_errors_per_connection,
            session_timeout_s=s.session_timeout_s,
            greet_pause_s=s.greet_pause_s,
            trusted_networks=tuple(s.networks()),
            feedback_addresses=s.feedback_address_set(),
            unsubscribe_domain=self.unsubscribe.domain if self.unsubscribe else "",
        )
        context = tls_context(s)

        def factory() -> IngestSMTP:
            return IngestSMTP(
                handler,
                limits=limits,
                registry=self.registry,
                on_rejected=handler.record_rejection,
                data_size_limit=s.max_message_size,
                hostname=self.hostname,
                ident=S220_READY_SUFFIX,
                tls_context=context,
                timeout=s.idle_timeout_s,
                auth_require_tls=True,
            )

        return factory

    async def stop(self) -> None:
        """Stop accepting, let open transactions finish (bounded), close sessions, flush."""
        self.registry.draining = True
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_s
        # Polled: a transaction also ends by RSET, QUIT or a dropped client, inside aiosmtpd.
        while self.registry.busy() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for connection in list(self.registry.connections):
            connection.close_with(S421_SHUTTING_DOWN)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        if self._store is not None:
            await self._store.stop()
        if self._engagement is not None:
            await self._engagement.stop()
        if self.usage is not None:
            await self.usage.stop()
        await self.publisher.stop()
        log.info("ingest stopped")


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = settings_epilog("INGEST_*", "DNS_*", "TENANTS_*")


async def serve(service: IngestService) -> None:
    stop = stop_event()
    await service.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await service.stop()


def run(args: argparse.Namespace) -> int:
    settings = load(IngestSettings)
    kafka = load(KafkaSettings)
    dns = load(DnsSettings)
    setup_logging(load(LogSettings), "ingest")
    # aiosmtpd logs every command line (addresses included) at INFO.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    eventloop.run(serve(IngestService(settings, kafka, dns)))
    return 0
