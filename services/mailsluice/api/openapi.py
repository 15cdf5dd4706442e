"""The API's OpenAPI document, as served at /openapi.json: `python -m mailsluice.api.openapi >
docs/openapi.json` regenerates the copy in docs/ (tests/api/test_openapi.py keeps it current)."""

from __future__ import annotations

import json
from typing import Any

from mailsluice.api.app import ApiState, build_app
from mailsluice.api.idempotency import IdempotencyBook
from mailsluice.api.send import Sender, SendLimits
from mailsluice.api.service import renderer_of
from mailsluice.api.settings import ApiSettings
from mailsluice.api.templates import templates_router
from mailsluice.policy.rollup import Rollup
from mailsluice.tenancy.quota import QuotaBook
from mailsluice.tenancy.registry import Registry


async def _nowhere(_: Any) -> None:
    raise RuntimeError("the OpenAPI writer sends nothing")


def document() -> dict[str, Any]:
    settings = ApiSettings.model_validate({})  # the defaults, not this environment's
    sender = Sender(
        renderer=renderer_of(settings),
        rollup=Rollup(()),
        match=lambda _address, _scopes: None,
        quota=QuotaBook(),
        publish=_nowhere,
        limits=SendLimits(0, 0, 0),
    )
    state = ApiState(Registry(), sender, IdempotencyBook(), settings.max_body_bytes)
    return build_app(state, [templates_router()]).openapi()


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
