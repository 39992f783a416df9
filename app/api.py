"""The FastAPI application: lead scores, segments, health and metrics for marketing automation and ops."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import metrics
from app.records import LeadRecord, RecordDecodeError
from app.settings import ServiceConfig, Settings
from app.store import InvalidCursor, LeadStore
from models.scoring import Scorer, load_scorer
from models.vector import feature_values
from schemas.api import (
    ErrorBody,
    HealthView,
    LeadView,
    RankedLead,
    ReadyView,
    SegmentInfo,
    SegmentLeadsPage,
    SegmentsView,
)

log = logging.getLogger(__name__)
_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "not found"},
    422: {"model": ErrorBody, "description": "invalid request"},
    503: {"model": ErrorBody, "description": "Redis unavailable"},
}
LeadId = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^\S+$")]
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect"})


class ServiceState:
    """What the lifespan opens: the store, the loaded model and the config."""

    def __init__(self, settings: Settings, store: LeadStore, scorer: Scorer, config: ServiceConfig) -> None:
        self.settings = settings
        self.store = store
        self.scorer = scorer
        self.config = config


def get_service(request: Request) -> ServiceState:
    service: ServiceState = request.app.state.service
    return service


ServiceDep = Annotated[ServiceState, Depends(get_service)]


def _iso(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None


def lead_view(record: LeadRecord, config: ServiceConfig) -> LeadView:
    state = record.state
    return LeadView(
        lead_id=record.lead_id,
        score=record.score,
        segment=record.segment,
        model_version=record.model_version,
        scored_at=_iso(record.scored_ms),
        last_event_at=_iso(state.anchor_ms),
        first_event_at=_iso(state.first_event_ms),
        event_counts=state.counts,
        features=feature_values(state, record.scored_ms or state.anchor_ms, config.features),
        profile=state.profile,
    )


def error_response(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "message": message})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    config = settings.service_config
    # Refuse to start on a model that does not fit the config: fail here, not on the first request.
    scorer = load_scorer(settings.model_path, config.features)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = LeadStore.from_url(str(settings.redis_url), timeout_seconds=settings.redis_timeout_seconds)
        app.state.service = ServiceState(settings, store, scorer, config)
        metrics.MODEL_INFO.info({"version": scorer.version, "config_hash": scorer.metadata.config_hash})
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(
        title="leadscore",
        version="0.1.0",
        description="Real-time lead scores, segments and the reasons behind them.",
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    _install_middleware(app, settings)

    @app.get("/leads/{lead_id}", responses=_ERRORS, tags=["leads"])
    async def get_lead(lead_id: LeadId, service: ServiceDep) -> LeadView:
        """A lead's current score, segment, event counts, features and profile."""
        record = await service.store.get(lead_id)
        if record is None:
            raise HTTPException(404, f"no lead {lead_id!r}: no event for it has been processed")
        return lead_view(record, service.config)

    @app.get("/segments", tags=["segments"], responses=_ERRORS)
    async def list_segments(service: ServiceDep) -> SegmentsView:
        """Segment definitions in rule order, with their current sizes."""
        rules = service.config.segments.rules
        sizes = await service.store.segment_sizes(r.name for r in rules)
        return SegmentsView(
            segments=[
                SegmentInfo(
                    name=r.name,
                    description=r.description,
                    rule=r.when.model_dump(exclude_none=True),
                    size=sizes[r.name],
                )
                for r in rules
            ]
        )

    @app.get("/segments/{name}/leads", tags=["segments"], responses=_ERRORS)
    async def segment_leads(
        name: Annotated[str, Path(max_length=100)],
        service: ServiceDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=2000)] = None,
    ) -> SegmentLeadsPage:
        """The segment's leads ranked by score (highest first), a page at a time."""
        if name not in service.config.segments.names:
            raise HTTPException(404, f"no segment {name!r}; GET /segments lists them")
        try:
            page = await service.store.segment_page(name, limit, cursor)
        except InvalidCursor as exc:
            raise HTTPException(422, str(exc)) from None
        return SegmentLeadsPage(
            segment=name,
            leads=[RankedLead(lead_id=lead, score=score) for lead, score in page.leads],
            next_cursor=page.next_cursor,
        )

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> HealthView:
        """The process is alive."""
        return HealthView(status="ok")

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ReadyView}})
    async def readyz(service: ServiceDep) -> JSONResponse:
        """Ready to serve: Redis answers and a model is loaded (503 otherwise)."""
        try:
            redis_ok = await service.store.ping()
        except (RedisError, OSError):
            metrics.REDIS_ERRORS.labels("ping").inc()
            redis_ok = False
        ready = redis_ok and service.scorer is not None
        body = ReadyView(
            status="ready" if ready else "unavailable", redis=redis_ok, model_version=service.scorer.version
        )
        return JSONResponse(status_code=200 if ready else 503, content=body.model_dump())

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kinds = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 422: "invalid_request"}
        return error_response(exc.status_code, kinds.get(exc.status_code, "error"), str(exc.detail))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        return error_response(422, "invalid_request", "; ".join(problems))

    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        metrics.REDIS_ERRORS.labels("api").inc()
        log.warning("Redis unavailable while serving %s: %s", request.url.path, exc)
        return error_response(503, "unavailable", "the lead store (Redis) is unavailable; retry shortly")

    async def corrupt_record(request: Request, exc: Exception) -> JSONResponse:
        log.error("undecodable record: %s", exc)
        return error_response(500, "corrupt_record", str(exc))

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(RedisError, redis_down)
    app.add_exception_handler(ConnectionError, redis_down)
    app.add_exception_handler(RecordDecodeError, corrupt_record)


def _install_middleware(app: FastAPI, settings: Settings) -> None:
    keys = frozenset(settings.api_keys)
    max_body = settings.max_request_bytes

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        declared_length = request.headers.get("content-length", "0")
        if not declared_length.isdigit() or int(declared_length) > max_body:
            response: Response = error_response(
                413, "body_too_large", f"request bodies are limited to {max_body} bytes"
            )
        elif keys and request.url.path not in _OPEN_PATHS and request.headers.get("x-api-key") not in keys:
            response = error_response(401, "unauthorized", "send a valid X-API-Key header")
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        metrics.HTTP_REQUEST_SECONDS.labels(template, request.method, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response
