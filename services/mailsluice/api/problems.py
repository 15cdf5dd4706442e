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


# The problem responses every authenticated route may give (for the OpenAPI document).
PROBLEM_SCHEMA = {
    "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
}
