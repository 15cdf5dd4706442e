"""Links the workers sign for services of ours (one-click unsubscribe, open and click
tracking): the operator's settings of each handed to every pool's workers, with the token keys
Secret mounted. Pure, like render."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailsluice_operator.settings import OperatorSettings

UNSUBSCRIBE_KEYS_DIR = "/etc/mailsluice/unsubscribe-keys"
TRACKING_KEYS_DIR = "/etc/mailsluice/tracking-keys"


@dataclass(frozen=True)
class SignedLinks:
    """Links the workers sign for a service of ours (unsubscribe, tracking): its settings as
    MAILSLUICE_<PREFIX>_*, its token keys from a Secret mounted at keys_dir."""

    prefix: str
    volume: str
    keys_dir: str
    url: str
    keys_secret: str
    active_key: str
    settings: Mapping[str, str]  # the service's own, besides the link base and keys

    def env(self) -> list[dict[str, str]]:
        values = {
            "URL": self.url,
            **self.settings,
            "KEYS_DIR": self.keys_dir,
            "ACTIVE_KEY": self.active_key,
        }
        return [{"name": f"MAILSLUICE_{self.prefix}_{k}", "value": v} for k, v in values.items()]

    def mount(self) -> dict[str, Any]:
        return {"name": self.volume, "mountPath": self.keys_dir, "readOnly": True}

    def pod_volume(self) -> dict[str, Any]:
        # Read-only for owner and group (the group is fsGroup, the worker's).
        secret = {"secretName": self.keys_secret, "defaultMode": 0o440}
        return {"name": self.volume, "secret": secret}


def signed_links(spec: Mapping[str, Any], op: OperatorSettings) -> list[SignedLinks]:
    """What every pool's workers sign links for: one-click unsubscribe and open and click
    tracking, each only while the operator has its link base and its keys Secret. The pool's
    `tracking` replaces the operator's default for its workers."""
    unsubscribe = SignedLinks(
        "UNSUBSCRIBE",
        "unsubscribe-keys",
        UNSUBSCRIBE_KEYS_DIR,
        op.unsubscribe_url,
        op.unsubscribe_keys_secret,
        op.unsubscribe_active_key,
        {"MAILTO_DOMAIN": op.unsubscribe_mailto_domain, "SCOPE": op.unsubscribe_scope},
    )
    tracking = SignedLinks(
        "TRACKING",
        "tracking-keys",
        TRACKING_KEYS_DIR,
        op.tracking_url,
        op.tracking_keys_secret,
        op.tracking_active_key,
        {
            "DEFAULT": str(spec.get("tracking") or op.tracking_default),
            "TRANSACTIONAL": str(op.tracking_transactional).lower(),
        },
    )
    return [links for links in (unsubscribe, tracking) if links.url and links.keys_secret]
