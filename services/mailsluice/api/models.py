"""The request and answer bodies of POST /v1/messages (pydantic; unknown fields are refused).

Checks that need nothing but the request live here (addresses, headers, labels, sizes that do
not depend on settings); what depends on the tenant or settings (owned domains, pools, data and
attachment sizes) is checked by api/send.py, with the same error shape.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailsluice.contracts.campaigns import LabelError, check_campaign, check_tags
from mailsluice.contracts.envelope import Stream
from mailsluice.policy.owners import normalise_domain
from mailsluice.tracking.settings import Choice

MAX_RECIPIENTS = 1000
MAX_HEADERS = 50
MAX_ATTACHMENTS = 100
MAX_SUBJECT_CHARS = 2000  # the template, before rendering
MAX_NAME_CHARS = 200

# dot-atom local part (RFC 5322 atext without % and !, which only serve routing tricks)
_ATOM = r"[A-Za-z0-9#$&'*+\-/=?^_`{|}~]+"
_LOCAL = re.compile(rf"^{_ATOM}(\.{_ATOM})*$")
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # printable ASCII but ":"
_POOL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LIST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}$")
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_CONTENT_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}$")

# Fields the API writes itself, or that change how a message is parsed or trusted.
REFUSED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "received",
        "dkim-signature",
        "sender",
        "return-path",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    }
)
REFUSED_PREFIXES = ("content-", "x-mailsluice-", "arc-", "authentication-results")


def check_address(value: str) -> str:
    """A mailbox `local@domain`: dot-atom local part, a fully qualified domain, no more."""
    local, at, domain = value.strip().rpartition("@")
    if not at or not local or len(local) > 64 or len(value) > 254 or not _LOCAL.match(local):
        raise ValueError("not a mailbox address local@domain")
    if not normalise_domain(domain) or not domain.isascii():
        raise ValueError("not a mailbox address local@domain")
    return f"{local}@{domain.lower()}"


def check_name(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a display name may not hold line breaks")
    return value


class Mailbox(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str = Field(description="The address, local@domain.", examples=["news@acme.test"])
    name: str = Field("", max_length=MAX_NAME_CHARS, description="Display name (optional).")

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return check_address(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    to: Mailbox
    data: dict[str, Any] = Field(
        default_factory=dict, description="Substitution data of this recipient's rendering."
    )


class Attachment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field("application/octet-stream", max_length=255)
    content: str = Field(description="The file, base64-encoded.")

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str) -> str:
        if any(c in value for c in '\r\n\0/\\"'):
            raise ValueError("a file name may not hold line breaks, quotes or slashes")
        return value

    @field_validator("content_type")
    @classmethod
    def _content_type(cls, value: str) -> str:
        if not _CONTENT_TYPE.match(value):
            raise ValueError("not a MIME type type/subtype")
        return value.lower()

    def decoded(self) -> bytes:
        return base64.b64decode(self.content, validate=True)

    @field_validator("content")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64") from None
        return value


class TemplateRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128, description="A stored template's id.")
    version: int | None = Field(None, ge=1, description="Its version (default: the latest).")


def check_header(name: str, value: str) -> None:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"header {name[:80]!r}: not a header field name")
    lower = name.lower()
    if lower in REFUSED_HEADERS or lower.startswith(REFUSED_PREFIXES):
        raise ValueError(f"header {name}: set by Mailsluice, may not be given")
    if any(c in value for c in "\r\n\0") or len(value) > 998:
        raise ValueError(f"header {name}: line breaks or over 998 characters")


class SendRequest(BaseModel):
    """One content for up to 1,000 recipients, each rendered with its own data."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: Mailbox = Field(alias="from", description="Envelope sender and From: field.")
    subject: str = Field("", max_length=MAX_SUBJECT_CHARS, description="Template of the subject.")
    text: str | None = Field(None, description="Template of the plain-text part.")
    html: str | None = Field(None, description="Template of the HTML part (autoescaped).")
    template: TemplateRef | None = Field(
        None, description="A stored template instead of subject, text and html."
    )
    attachments: list[Attachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra header fields (not structural ones)."
    )
    recipients: Annotated[list[Recipient], Field(min_length=1, max_length=MAX_RECIPIENTS)]
    pool: str | None = Field(None, description="One of the tenant's pools (default: its first).")
    stream: Stream = "bulk"
    campaign: str = Field("", description="Campaign id the message is reported under.")
    tags: list[str] = Field(default_factory=list, description="Free-form tags (at most 10).")
    list_id: str = Field("", description="The list it is sent to: List-Id and suppression scope.")
    tracking: Choice | None = Field(
        None,
        description="Open and click tracking of these messages (and so of their campaign): "
        "off, opens, clicks or all. Unset: the tenant's default, else the pool's.",
    )

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_HEADERS:
            raise ValueError(f"at most {MAX_HEADERS} headers")
        for name, text in value.items():
            check_header(name, text)
        return value

    @field_validator("campaign")
    @classmethod
    def _campaign(cls, value: str) -> str:
        try:
            return check_campaign(value)
        except LabelError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        try:
            return list(check_tags(value))
        except LabelError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("pool")
    @classmethod
    def _pool(cls, value: str | None) -> str | None:
        if value is not None and not _POOL.match(value):
            raise ValueError("not a pool name")
        return value

    @field_validator("list_id")
    @classmethod
    def _list_id(cls, value: str) -> str:
        if value and not _LIST_ID.match(value):
            raise ValueError("1-200 letters, digits or ._@+- starting with a letter or digit")
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        return check_name(value)

    @model_validator(mode="after")
    def _content(self) -> SendRequest:
        if self.template is not None:
            if self.text is not None or self.html is not None or self.subject:
                raise ValueError("give a template or subject/text/html, not both")
        elif self.text is None and self.html is None:
            raise ValueError("give text, html or both (or a stored template)")
        return self


Status = Literal["accepted", "suppressed", "rejected"]


class RecipientResult(BaseModel):
    index: int
    to: str
    id: str = Field("", description="Queue id of the recipient's message ('' if not accepted).")
    status: Status
    reason: str = ""


class SendAnswer(BaseModel):
    """202: one entry per recipient, in request order."""

    accepted: int
    results: list[RecipientResult]
