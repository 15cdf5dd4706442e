"""SendingTenant bodies and key material for the operator's tenant tests (pure and cluster)."""

from __future__ import annotations

import base64
from typing import Any

from mailsluice.tenancy.keys import new_key

KEY_A, DIGEST_A = new_key("acmekey1")
KEY_B, DIGEST_B = new_key("betakey1")
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef01234567").decode()
WHSEC_NEXT = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba98").decode()
SCRYPT = "scrypt$16384$8$1$c2FsdA==$aGFzaA=="


def tenant_body(
    name: str,
    created: str = "2026-12-01T10:00:00Z",
    namespace: str = "mail",
    generation: int = 1,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "mailsluice.io/v1alpha1",
        "kind": "SendingTenant",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "generation": generation,
            "creationTimestamp": created,
        },
        "spec": {"pools": ["default"], "domains": [f"{name}.test"], **spec},
    }


def secret(name: str, **data: str) -> dict[str, Any]:
    """A Secret as the API server returns it (base64 data)."""
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}
