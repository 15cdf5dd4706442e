"""`mailsluice config check [SERVICE...]`: each service's settings checked the way the service
checks them at start (the same settings classes, the same "invalid setting MAILSLUICE_...:"
messages, the keys it reads), without starting anything. `make run` runs it before it starts
Kafka, so a bad value stops the run in a second instead of as a service's exit status later.

Settings classes are named by "module:Class" and imported with importlib, as `config docs`
does: admin must not import the stages (import-linter's independence contract).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from pydantic import ValidationError

from mailsluice.config import MailsluiceSettings, describe_errors

KAFKA = "mailsluice.kafka.settings:KafkaSettings"
LOG = "mailsluice.config:LogSettings"
DNS = "mailsluice.resolver:DnsSettings"
TENANCY = "mailsluice.tenancy.settings:TenancySettings"
UNSUBSCRIBE = "mailsluice.consent.settings:UnsubscribeSettings"
TRACKING = "mailsluice.tracking.settings:TrackingSettings"
HYGIENE = "mailsluice.engagement.settings:HygieneSettings"

# What each service loads before it opens a port (its run(), and the constructors run() calls).
SERVICE_SETTINGS: dict[str, tuple[str, ...]] = {
    "ingest": (
        KAFKA,
        LOG,
        DNS,
        "mailsluice.ingest.settings:IngestSettings",
        UNSUBSCRIBE,
        TENANCY,
    ),
    "delivery": (
        KAFKA,
        LOG,
        DNS,
        "mailsluice.delivery.worker.settings:DeliverySettings",
        "mailsluice.delivery.shaping.settings:ShapingSettings",
        "mailsluice.delivery.transport.settings:OutboundSettings",
        "mailsluice.dkim.settings:DkimSettings",
        UNSUBSCRIBE,
        TRACKING,
    ),
    "retry-mover": (KAFKA, LOG, "mailsluice.delivery.retry.settings:RetryMoverSettings"),
    "streams": (KAFKA, LOG, "mailsluice.streams.settings:StreamsSettings", HYGIENE, TENANCY),
    "sandbox": ("mailsluice.sandbox.settings:SandboxSettings",),
    "api": (KAFKA, LOG, "mailsluice.api.settings:ApiSettings", TENANCY, HYGIENE),
    "webhooks": (KAFKA, LOG, "mailsluice.webhooks.settings:WebhooksSettings", TENANCY),
    "tracker": (KAFKA, LOG, TRACKING),
    "unsubscribe": (KAFKA, LOG, UNSUBSCRIBE),
    "operator": (KAFKA, LOG, "mailsluice_operator.settings:OperatorSettings"),
}


def settings_class(ref: str) -> type[MailsluiceSettings]:
    module, _, name = ref.partition(":")
    cls: type[MailsluiceSettings] = getattr(importlib.import_module(module), name)
    return cls


def _keys(ref: str, what: str, required: bool) -> Callable[[], str | None]:
    """A check that the key ring of a settings class reads (and is not empty, if required),
    with the message the service logs when it is not."""

    def check() -> str | None:
        try:
            ring = settings_class(ref)().key_ring()  # type: ignore[attr-defined]
        except (OSError, ValueError) as exc:
            return f"{what} keys: {exc}"
        if required and not ring:
            return f"no {what} keys (MAILSLUICE_{what.upper()}_KEYS_DIR or _KEYS)"
        return None

    return check


def _dkim() -> str | None:
    try:
        settings_class("mailsluice.dkim.settings:DkimSettings")().plan()  # type: ignore[attr-defined]
    except (OSError, ValueError) as exc:
        return f"invalid DKIM keys or schedule: {exc}"
    return None


# Beyond the settings classes: the keys a service reads before it takes any work.
EXTRA_CHECKS: dict[str, tuple[Callable[[], str | None], ...]] = {
    "delivery": (
        _dkim,
        _keys(UNSUBSCRIBE, "unsubscribe", False),
        _keys(TRACKING, "tracking", False),
    ),
    "tracker": (_keys(TRACKING, "tracking", True),),
    "unsubscribe": (_keys(UNSUBSCRIBE, "unsubscribe", True),),
}


def check(services: Iterable[str]) -> list[str]:
    """Every problem with the settings of these services, one message per line (each names
    its variable); [] when they would all start. Each settings group is checked once."""
    problems: list[str] = []
    checked: dict[str, bool] = {}  # settings class -> valid
    for service in services:
        for ref in SERVICE_SETTINGS[service]:
            if ref not in checked:
                checked[ref] = _valid(ref, problems)
        if not all(checked[ref] for ref in SERVICE_SETTINGS[service]):
            continue  # the extras read the same settings: their errors would repeat these
        for extra in EXTRA_CHECKS.get(service, ()):
            message = extra()
            if message is not None:
                problems.append(f"{service}: {message}")
    return problems


def _valid(ref: str, problems: list[str]) -> bool:
    cls = settings_class(ref)
    try:
        cls()
    except ValidationError as exc:
        problems += describe_errors(cls, exc).splitlines()
        return False
    return True
