"""Who is calling: `Authorization: Bearer <API key>` finds the tenant (tenancy/registry.py).

`current_tenant` is the FastAPI dependency every tenant route uses; the registry is the app's
(`app.state.registry`, set by api/app.py). A missing, malformed or unknown key is 401 with a
WWW-Authenticate challenge; nothing tells a wrong key from one of another tenant.
"""

from __future__ import annotations

from fastapi import Request

from mailsluice.api.problems import Problem
from mailsluice.tenancy.model import Tenant
from mailsluice.tenancy.registry import Registry

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mailsluice"'}


def unauthorised(detail: str) -> Problem:
    return Problem(401, "Unauthorised", detail, headers=CHALLENGE)


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` value, or None."""
    scheme, _, key = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def current_tenant(request: Request) -> Tenant:
    """The tenant the request's API key belongs to; 401 Problem otherwise."""
    key = bearer_key(request.headers.get("authorization"))
    if key is None:
        raise unauthorised("Send the API key as `Authorization: Bearer <key>`.")
    registry: Registry = request.app.state.registry
    tenant = registry.by_api_key(key)
    if tenant is None:
        raise unauthorised("The API key is not valid.")
    return tenant
