"""The middleware every request passes through: the body-size limit, the API-key guard, request timing."""

from __future__ import annotations

import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.api.access import ApiKeys, required_scope
from app.api.errors import error_kind, error_response
from app.api.page import PAGE_ASSETS, PAGE_PATH

# The docs pages' assets come from the fastapi-offline package, served under this prefix (the package's default,
# named here so the API-key guard and the mount agree).
DOCS_ASSETS = "/static-offline-docs"
_OPEN_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", PAGE_PATH}
)


def is_open_path(path: str) -> bool:
    """Paths anyone may read without an API key: health, metrics, the API's own documentation and the page's files
    (the page asks for a key and sends it with the API calls that read data)."""
    return path in _OPEN_PATHS or path.startswith((DOCS_ASSETS + "/", PAGE_ASSETS + "/"))


class GuardAndObserve:
    """Plain ASGI middleware (cheaper than BaseHTTPMiddleware on every request): refuses oversized bodies
    and missing API keys with JSON errors, and times each request by route template and status."""

    def __init__(self, app: ASGIApp, *, api_keys: ApiKeys, max_body: int) -> None:
        self.app = app
        self.api_keys = api_keys
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        headers = dict(scope["headers"])
        declared_length = headers.get(b"content-length", b"0")

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if not declared_length.isdigit() or int(declared_length) > self.max_body:
            refusal: JSONResponse | None = error_response(
                413, error_kind(413), f"request bodies are limited to {self.max_body} bytes"
            )
        elif not self.api_keys.open and not is_open_path(scope["path"]):
            refusal = self._refusal(scope, headers)
        else:
            refusal = None
        try:
            if refusal is not None:
                await refusal(scope, receive, remember_status)
            else:
                await self.app(scope, receive, remember_status)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            metrics.HTTP_REQUEST_SECONDS.labels(template, scope["method"], str(status)).observe(
                time.perf_counter() - started
            )

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> JSONResponse | None:
        scopes = self.api_keys.scopes(headers.get(b"x-api-key"))
        if scopes is None:
            return error_response(401, error_kind(401), "send a valid X-API-Key header")
        needed = required_scope(scope["method"], scope["path"])
        if not self.api_keys.allows(scopes, needed):
            return error_response(403, error_kind(403), f"this API key lacks the {needed.value!r} scope")
        return None
