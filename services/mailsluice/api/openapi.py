"""The API's OpenAPI document, as served at /openapi.json: `python -m mailsluice.api.openapi >
docs/openapi.json` regenerates the copy in docs/ (tests/api/test_openapi.py keeps it current)."""

from __future__ import annotations

import json
from typing import Any

from mailsluice.api.service import ApiService
from mailsluice.api.settings import ApiSettings
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.tenancy.registry import Registry


def document() -> dict[str, Any]:
    """The document of the service as `mailsluice api` builds it (every router), on the
    defaults rather than this environment's settings; nothing is started."""
    service = ApiService(
        ApiSettings.model_validate({}), KafkaSettings.model_validate({}), Registry(), ops=False
    )
    return service.app.openapi()


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
