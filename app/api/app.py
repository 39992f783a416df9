"""The FastAPI application: the factory that wires the routes, errors and middleware, and the lifespan that opens
the lead store and loads the model the routes serve."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline

from app import metrics
from app.api import events as event_routes
from app.api import leads, ops, overview, page, segments
from app.api import models as model_routes
from app.api.access import ApiKeys
from app.api.deps import EventSink, ServiceState
from app.api.errors import install_error_handlers
from app.api.middleware import DOCS_ASSETS, GuardAndObserve, is_open_path
from app.model_registry import ActiveModelWatcher, active_scorer
from app.settings import Settings
from app.storage.leads import open_store

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the lead store, load the registry's active model and follow the registry while serving (the routes
    read all of it as `app.state.service`); stop following and close the store on the way out."""
    settings: Settings = app.state.settings
    config = settings.service_config
    if not settings.api_keys:
        log.warning("no API keys (LEADSCORE_API_KEYS): every route is open to anyone who can reach this port")
    store = open_store(settings)
    try:
        # A model that does not fit the config (ModelRefused) stops the start here, not on the first request.
        scorer = await active_scorer(settings, store)
        events: EventSink | None = app.state.events
        service = ServiceState(settings, store, scorer, config, events)
        metrics.MODEL_INFO.info({"version": scorer.version, "config_hash": scorer.metadata.config_hash})
        watcher = ActiveModelWatcher(
            store.models, config.features, scorer.version, service.serve_model, settings.model_poll_seconds
        )
        stop = asyncio.Event()
        service.model_watch = asyncio.create_task(watcher.run(stop))
        service.model_watch.add_done_callback(_report_failed_watch)
        app.state.service = service
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait([service.model_watch])  # a watcher that failed was reported when it did
            if events is not None:
                await events.stop()
    finally:
        await store.close()


def _declare_api_key(app: FastAPI) -> None:
    """The OpenAPI document declares the X-API-Key header on every route that needs it, so /docs can authorise."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": _SCOPES_TEXT}
            }
            for path, operations in schema["paths"].items():
                if not is_open_path(path):
                    for operation in operations.values():
                        operation["security"] = [{"ApiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


_SCOPES_TEXT = "a key from LEADSCORE_API_KEYS; read for reads, write for POST /events, admin for everything"


def _report_failed_watch(watch: asyncio.Task[None]) -> None:
    if not watch.cancelled() and (error := watch.exception()) is not None:
        log.error("stopped following the model registry; /readyz answers 503 until a restart", exc_info=error)


def create_app(settings: Settings | None = None, events: EventSink | None = None) -> FastAPI:
    """The API; `events` takes what `POST /events` receives (without one, that route answers 503)."""
    settings = settings or Settings()
    # FastAPIOffline builds a plain FastAPI app whose /docs and /redoc pages load Swagger UI and ReDoc from files
    # shipped in the fastapi-offline wheel (mounted at DOCS_ASSETS), not from a CDN: the docs work offline.
    app = FastAPIOffline(
        title="leadscore",
        version="0.1.0",
        description="Real-time lead scores, segments and the reasons behind them.",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
    )
    app.state.settings = settings
    app.state.events = events
    _add_routes(
        app,
        leads.router,
        segments.router,
        overview.router,
        event_routes.router,
        model_routes.router,
        ops.router,
        page.router,
    )
    page.mount_page_assets(app)
    install_error_handlers(app)
    api_keys = ApiKeys.parse(settings.api_keys)
    app.add_middleware(GuardAndObserve, api_keys=api_keys, max_body=settings.max_request_bytes)
    if not api_keys.open:
        _declare_api_key(app)
    return app


def _add_routes(app: FastAPI, *routers: APIRouter) -> None:
    """The routers' routes, in order, as the app's own.

    Not `include_router`: FastAPI 0.165 keeps an included router as a wrapper that every request is matched
    through, twice. Measured in-process (ASGI calls, the store stubbed), that took /healthz from ~55 to ~80 µs and
    added up to ~15 µs to GET /leads/{id} (~90 µs). The routes keep their routers' settings (tags, documented
    errors); `app.dependency_overrides` does not reach them, which no test needs: tests run the real lifespan.
    """
    for router in routers:
        app.router.routes.extend(router.routes)
