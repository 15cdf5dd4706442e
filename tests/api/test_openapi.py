"""The OpenAPI document: docs/openapi.json is the one the API serves, kept current."""

from __future__ import annotations

import json
from pathlib import Path

from support.api import Served

from mailsluice.api.openapi import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_docs_openapi_json_is_current() -> None:
    # Regenerate with: .venv/bin/python -m mailsluice.api.openapi > docs/openapi.json
    assert DOC.read_text() == render(), (
        "docs/openapi.json is stale; run `.venv/bin/python -m mailsluice.api.openapi "
        "> docs/openapi.json`"
    )


async def test_the_api_serves_the_same_document(served: Served) -> None:
    async with served.http.get(f"{served.url}/openapi.json") as resp:
        assert resp.status == 200
        served_doc = await resp.json()
    assert served_doc == json.loads(DOC.read_text())
    post = served_doc["paths"]["/v1/messages"]["post"]
    assert set(post["responses"]) >= {"202", "401", "403", "409", "422", "429", "503"}
    problem = post["responses"]["422"]["content"]
    assert list(problem) == ["application/problem+json"]
    schema = served_doc["components"]["schemas"]["SendRequest"]
    assert "from" in schema["properties"] and schema["additionalProperties"] is False
