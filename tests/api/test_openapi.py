"""The OpenAPI document: docs/openapi.json is the one the API serves, kept current."""

from __future__ import annotations

from pathlib import Path

from mailsluice.api.openapi import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_docs_openapi_json_is_current() -> None:
    # Regenerate with: .venv/bin/python -m mailsluice.api.openapi > docs/openapi.json
    assert DOC.read_text() == render(), (
        "docs/openapi.json is stale; run `.venv/bin/python -m mailsluice.api.openapi "
        "> docs/openapi.json`"
    )
