"""Records of the compacted topic mailsluice.templates: a tenant's stored message templates,
one record per version (key `<tenant>|<template id>|<version>`), so every version stays
readable and the latest is the highest number. A template is the content of a message
(subject, text, html) in the sandboxed template language of the HTTP API (api/render.py)."""

from __future__ import annotations

import re
import time

from pydantic import BaseModel, ConfigDict, Field

from mailsluice.contracts.versioning import load_versioned

VERSION = 1

TEMPLATE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StoredTemplate(BaseModel):
    """One version of one template of one tenant."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = VERSION
    tenant: str
    id: str
    version: int = Field(ge=1)
    subject: str = ""
    text: str | None = None
    html: str | None = None
    ts: float = Field(default_factory=time.time)


def template_key(tenant: str, template_id: str, version: int) -> bytes:
    return f"{tenant}|{template_id}|{version}".encode()


def encode_template(template: StoredTemplate) -> bytes:
    return template.model_dump_json().encode()


def decode_template(raw: bytes) -> StoredTemplate:
    return StoredTemplate.model_validate(load_versioned(raw, VERSION, "template"))
