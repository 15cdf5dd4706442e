"""RFC 9457 problem details: the one shape of every error the HTTP API answers with.

Routers raise `Problem`; the app's handlers turn it, and FastAPI's own validation errors, into
`application/problem+json` responses. A validation problem lists each error with the field it
concerns in the request's own notation (`recipients[17].to.email`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """An error answer: status, a short title, a detail for this occurrence, extra members."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers=self.headers, media_type=MEDIA_TYPE)


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    """A problem response for a route that answers it rather than raising."""
    return Problem(status, title, detail, **extra).response()


def field_path(loc: Iterable[str | int]) -> str:
    """`("recipients", 17, "to", "email")` -> `recipients[17].to.email`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def invalid(errors: Sequence[Mapping[str, Any]]) -> Problem:
    """422 listing each error as {field, message}."""
    listed = [{"field": e["field"], "message": e["message"]} for e in errors]
    first = listed[0] if listed else {"field": "", "message": "invalid"}
    detail = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    if len(listed) > 1:
        detail += f" (and {len(listed) - 1} more)"
    return Problem(422, "Invalid request", detail, errors=listed)


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """FastAPI's errors as {field, message}, the field without its `body` prefix."""
    found = []
    for error in exc.errors():
        loc = list(error.get("loc", ()))
        if loc and loc[0] in ("body", "header", "query", "path"):
            loc = loc[1:]
        message = str(error.get("msg", "invalid"))
        found.append({"field": field_path(loc), "message": message.removeprefix("Value error, ")})
    return found


def install(app: FastAPI) -> None:
    """Answer Problems and validation errors as problem details."""

    async def on_problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return exc.response()

    async def on_invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return invalid(validation_errors(exc)).response()

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_invalid)


class ProblemDetails(BaseModel):
    """RFC 9457 problem details (application/problem+json)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, str]] | None = None


# What each problem status means, for the OpenAPI document.
MEANINGS = {
    400: "Bad request (a bad Idempotency-Key)",
    401: "No or an unknown API key",
    403: "The sender is not in one of the tenant's domains",
    404: "No such resource",
    409: "A request with this Idempotency-Key is in progress",
    413: "The body is too large",
    422: "The request is invalid; `errors` names each field",
    429: "Over quota; Retry-After says when it fits",
    503: "Kafka did not take the records in time; Retry-After",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that answers these problems (OpenAPI)."""
    return {code: {"model": ProblemDetails, "description": MEANINGS[code]} for code in codes}


def problem_media(document: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI document with the problem responses under application/problem+json, which
    FastAPI would list as application/json."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for code, answer in operation.get("responses", {}).items():
                content = answer.get("content", {})
                if code.startswith(("4", "5")) and "application/json" in content:
                    content[MEDIA_TYPE] = content.pop("application/json")
    return document
