"""DKIM signing in the transport, on the bytes exactly as they go out: line ends normalised to
CRLF the way `wire_data` does, after every header change the worker made; dot-stuffing comes
after (it is transparent, the receiver undoes it).

The signing domain is the header From domain when it has a key, else the pool's domain
(MAILSLUICE_DKIM_DOMAIN); with neither, the message goes unsigned and a metric says why.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.transport.connection import crlf_message
from mailsluice.dkim.plan import SigningPlan
from mailsluice.dkim.settings import DkimSettings
from mailsluice.dkim.sign import SigningError, signature_fields
from mailsluice.metrics.dkim import SIGNATURES, UNSIGNED

log = logging.getLogger(__name__)

Signer = Callable[[Envelope, bytes], bytes]
_ANGLE_DOMAIN = re.compile(rb"<[^<>@]*@([^<>\s]+)>")
_BARE_DOMAIN = re.compile(rb"@([A-Za-z0-9.-]+)")
_FROM = re.compile(rb"(?im)^from[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)")


class DkimSigner:
    """Signs messages by `plan` at the time `clock` gives; see the module docstring."""

    def __init__(
        self, plan: SigningPlan, domain: str = "", *, clock: Callable[[], float] = time.time
    ) -> None:
        self.plan, self.domain, self.clock = plan, domain, clock

    def __call__(self, env: Envelope, message: bytes) -> bytes:
        """`message` with CRLF line ends and DKIM-Signature fields on top (when a key signs)."""
        data = crlf_message(message)
        now = self.clock()
        keys = self.plan.signing_keys(from_domain(data), now)
        if not keys and self.domain:
            keys = self.plan.signing_keys(self.domain, now)
        if not keys:
            UNSIGNED.labels("no_key").inc()
            return data
        try:
            fields = signature_fields(data, keys, int(now))
        except SigningError as exc:
            log.warning("message not signed: %s", exc, extra={"queue_id": env.queue_id})
            UNSIGNED.labels("bad_message").inc()
            return data
        for key in keys:
            SIGNATURES.labels(key.algorithm).inc()
        return fields + data


def from_domain(message: bytes) -> str:
    """The domain of the first address of the header From field, "" when there is none."""
    end = message.find(b"\r\n\r\n")
    found = _FROM.search(message if end < 0 else message[: end + 2])
    if found is None:
        return ""
    value = found.group(1)
    # An angle address wins over any '@' in the display name; else the bare addr-spec.
    address = _ANGLE_DOMAIN.search(value) or _BARE_DOMAIN.search(value)
    if address is None:
        return ""
    return address.group(1).decode("ascii", "replace").lower().rstrip(".")


def signer_from_settings(settings: DkimSettings) -> DkimSigner | None:
    """The signer MAILSLUICE_DKIM_* describe, None when signing is off."""
    plan = settings.plan()
    return None if plan is None else DkimSigner(plan, settings.domain)
