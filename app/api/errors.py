"""Errors as the API sends them: one JSON body (`ErrorBody`: a kind and a message) for every failure, the
responses the routes document, and the handlers that turn exceptions into that body."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import Scope

from app import metrics
from app.storage.codec import RecordDecodeError
from app.storage.errors import StoreError
from schemas.api import ErrorBody

log = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "not found"},
    422: {"model": ErrorBody, "description": "invalid request"},
    503: {"model": ErrorBody, "description": "Redis unavailable"},
}
# Routes that read a body can also fail before validation: a body that is not UTF-8 JSON, or one too large.
BODY_ERROR_RESPONSES: dict[int | str, dict[str, object]] = ERROR_RESPONSES | {
    400: {"model": ErrorBody, "description": "the body is not readable JSON (e.g. not UTF-8)"},
    413: {"model": ErrorBody, "description": "the body is larger than the configured limit"},
}

# FastAPI's detail for a body it could not decode (e.g. not UTF-8), and what we tell the client instead.
_FASTAPI_BODY_ERROR = "There was an error parsing the body"
_BODY_UNREADABLE = "the body could not be read: send JSON encoded as UTF-8 (Content-Type: application/json)"
# Names clients already know, where they differ from the status' own name.
_ERROR_KINDS = {413: "body_too_large", 422: "invalid_request"}


def error_response(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "message": message})


def error_kind(status: int) -> str:
    """The `error` field for an HTTP error status: its standard name in snake case (400 -> bad_request)."""
    if status in _ERROR_KINDS:
        return _ERROR_KINDS[status]
    try:
        return HTTPStatus(status).name.lower()
    except ValueError:
        return "error"


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StoreError, _store_unavailable)
    app.add_exception_handler(ConnectionError, _store_unavailable)
    app.add_exception_handler(RecordDecodeError, _corrupt_record)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = _BODY_UNREADABLE if status == 400 and exc.detail == _FASTAPI_BODY_ERROR else str(exc.detail)
    response = error_response(status, error_kind(status), message)
    response.headers.update(exc.headers or {})  # e.g. Starlette's Allow on a 405
    allowed = _allowed_methods(request.app, request.scope) if status == 405 else None
    if allowed is not None:
        response.headers["Allow"] = allowed
    return response


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
    return error_response(422, "invalid_request", "; ".join(problems))


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    metrics.REDIS_ERRORS.labels("api").inc()
    log.warning("Redis unavailable while serving %s: %s", request.url.path, exc)
    return error_response(503, "unavailable", "the lead store (Redis) is unavailable; retry shortly")


async def _corrupt_record(request: Request, exc: Exception) -> JSONResponse:
    log.error("undecodable record: %s", exc)
    return error_response(500, "corrupt_record", str(exc))


def _allowed_methods(app: FastAPI, scope: Scope) -> str | None:
    """The methods the resource at this path supports, for a 405's Allow header (RFC 9110 requires one); None
    where no route with methods matches (the docs assets' mount sets its own).

    Starlette's own header names the methods of whichever route it tried first. Here paths match as OpenAPI
    matches them, a concrete path before a template: /leads/batch-get is the batch operation's resource (POST), as
    the schema documents it, although GET there still reads a lead of that name through /leads/{lead_id}.
    """
    matching = [
        route
        for route in app.router.routes
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] is not Match.NONE
    ]
    concrete = [route for route in matching if not route.param_convertors]
    methods = {method for route in concrete or matching for method in route.methods or ()}
    return ", ".join(sorted(methods)) or None
