"""The FastAPI application: lead scores, segments, health and metrics for marketing automation and ops."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.domain.batch import score_leads
from app.domain.lead import LeadRecord
from app.model_registry import ActiveModelWatcher, active_scorer
from app.settings import ServiceConfig, Settings
from app.storage.codec import RecordDecodeError
from app.storage.errors import STORE_UNAVAILABLE, StoreError
from app.storage.leads import InvalidCursor, LeadStore, open_store
from app.storage.registry import ModelStore
from models.explain import explain
from models.scoring import ModelRefused, Scorer
from models.state import LeadState
from models.vector import feature_values
from schemas.api import (
    BatchGetRequest,
    BatchGetView,
    ErrorBody,
    HealthView,
    HistoryEntry,
    HistoryView,
    LeadView,
    RankedLead,
    ReadyView,
    SegmentInfo,
    SegmentLeadsPage,
    SegmentSetView,
    SegmentsView,
)
from schemas.events import LEAD_ID_PATTERN, MAX_ID_LENGTH

log = logging.getLogger(__name__)
_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "not found"},
    422: {"model": ErrorBody, "description": "invalid request"},
    503: {"model": ErrorBody, "description": "Redis unavailable"},
}
# Routes that read a body can also fail before validation: a body that is not UTF-8 JSON, or one too large.
_BODY_ERRORS: dict[int | str, dict[str, object]] = _ERRORS | {
    400: {"model": ErrorBody, "description": "the body is not readable JSON (e.g. not UTF-8)"},
    413: {"model": ErrorBody, "description": "the body is larger than the configured limit"},
}
LeadId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=LEAD_ID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=1000, description="leads per page")]
Cursor = Annotated[str | None, Query(max_length=2000, description="next_cursor of the previous page")]
MinScore = Annotated[float | None, Query(ge=0, le=1, description="only leads scoring at least this")]
_RFC3339 = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt](?P<time>[0-9]{2}:[0-9]{2}):(?P<second>[0-9]{2})(?P<fraction>\.[0-9]+)?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_LONG_AGO = datetime.min.replace(tzinfo=UTC)
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)  # later than any event (schemas.events.MAX_TS_MS)


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 date-time, offset required: exactly what the schema's `format: date-time` admits.

    Stricter than pydantic's datetime, which also takes a bare date, epoch seconds or a local time; the
    events' `ts` refuses a local time too, and clients that validate against the schema expect the same.
    """
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError(f"{value[:40]!r} is not an RFC 3339 date-time (e.g. 2026-11-22T10:00:00Z)")
    if match["offset"] is None:
        raise ValueError(
            f"{value[:40]!r} needs a UTC offset, Z or +01:00 (e.g. 2026-11-22T10:00:00Z): a local time is ambiguous"
        )
    # Year 0 is valid RFC 3339 but not a Python date: check the rest in 2000 (a leap year too), then read it
    # as the distant past, which as a lower bound admits every event just as year 0 would.
    year_zero = match["date"].startswith("0000")
    date = "2000" + match["date"][4:] if year_zero else match["date"]
    leap = match["second"] == "60"
    second = "59" if leap else match["second"]
    offset = match["offset"].upper().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(f"{date}T{match['time']}:{second}{match['fraction'] or ''}{offset}")
    except ValueError as exc:
        raise ValueError(f"{value[:40]!r} is not a valid date-time: {exc}") from None
    if leap:
        # RFC 3339 admits a leap second only as a UTC day's last; it then reads as the next day's first instant.
        if (parsed - _EPOCH) // timedelta(seconds=1) % 86_400 != 86_399:
            raise ValueError(f"{value[:40]!r} is not a valid date-time: a leap second ends a UTC day")
        try:
            parsed += timedelta(seconds=1)
        except OverflowError:
            return _END_OF_TIME
    return _LONG_AGO if year_zero else parsed


def _rfc3339_query(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        # A custom error type: pydantic would prefix a ValueError's message with "Value error, ".
        raise PydanticCustomError("rfc3339", str(exc)) from None


ActiveSince = Annotated[
    datetime | None,
    BeforeValidator(_rfc3339_query),
    Query(
        description="only leads with an event at or after this time: an RFC 3339 date-time with a UTC offset, "
        "Z or +01:00 (e.g. 2026-11-22T10:00:00Z); a time without an offset is refused (422)"
    ),
]
_MAX_FILTER_READS = 20
# The docs pages' assets come from the fastapi-offline package, served under this prefix (the package's default,
# named here so the API-key guard and the mount agree).
_DOCS_ASSETS = "/static-offline-docs"
_OPEN_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)


def _is_open(path: str) -> bool:
    """Paths anyone may read without an API key: health, metrics, and the API's own documentation."""
    return path in _OPEN_PATHS or path.startswith(_DOCS_ASSETS + "/")


class ServiceState:
    """What the lifespan opens: the store, the loaded model and the config."""

    def __init__(self, settings: Settings, store: LeadStore, scorer: Scorer, config: ServiceConfig) -> None:
        self.settings = settings
        self.store = store
        self.scorer = scorer
        self.config = config


async def get_service(request: Request) -> ServiceState:
    # async: FastAPI runs a plain `def` dependency in a worker thread, on every request.
    service: ServiceState = request.app.state.service
    return service


ServiceDep = Annotated[ServiceState, Depends(get_service)]


def _iso(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None


def lead_document(
    record: LeadRecord,
    config: ServiceConfig,
    scorer: Scorer | None = None,
    *,
    reasons: int = 0,
    fresh_at_ms: int | None = None,
) -> dict[str, Any]:
    """The API's view of a record as plain JSON-ready data (`LeadView`'s fields); `reasons` > 0 explains the
    stored score, `fresh_at_ms` rescores as of then. Rendered with orjson, it is byte-equal to the LeadView
    pydantic would render (a test holds them equal) at a fraction of the cost."""
    state = record.state
    features = feature_values(state, record.scored_ms or state.anchor_ms, config.features)
    document: dict[str, Any] = {
        "lead_id": record.lead_id,
        "score": record.score,
        "segment": record.segments.get(config.segments.primary),
        "segments": record.segments,
        "model_version": record.model_version,
        "scored_at": _iso(record.scored_ms),
        "last_event_at": _iso(state.anchor_ms),
        "first_event_at": _iso(state.first_event_ms),
        "event_counts": state.counts,
        "features": features,
        "profile": state.profile,
        "status": lead_status(state, config.features.conversion_type),
        "exited_at": _iso(state.exited_ms),
        "invalid_values": state.invalid_values,
        "reasons": None,
        "raw_score": None,
        "bias": None,
        "current": None,
    }
    if state.exited_ms:
        reasons = 0  # scored 0 because it exited, not by the model: there is nothing of the model's to explain
    if scorer is not None and reasons > 0:
        explanation = explain(scorer, [features], config.features, reasons)[0]
        document["reasons"] = [
            {"feature": r.feature, "value": r.value, "contribution": r.contribution, "sentence": r.sentence}
            for r in explanation.reasons
        ]
        document["raw_score"], document["bias"] = explanation.raw_score, explanation.bias
    if scorer is not None and fresh_at_ms is not None:
        now = LeadRecord(record.lead_id, state, segments=dict(record.segments))
        score_leads([now], fresh_at_ms, scorer, config.features, config.segments)
        document["current"] = {
            "as_of": datetime.fromtimestamp(fresh_at_ms / 1000, tz=UTC),
            "score": now.score or 0.0,
            "segments": now.segments,
        }
    return document


def lead_status(state: LeadState, conversion_type: str) -> str:
    if state.exited_ms:
        return "exited"
    return "converted" if state.counts.get(conversion_type) else "open"


def render_lead(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_UTC_Z)


def lead_view(record: LeadRecord, config: ServiceConfig) -> LeadView:
    """A record as a LeadView model (without reasons), for responses that embed leads."""
    # model_construct: the values are ours and typed; validating ~50 of them would cost more than the rest
    return LeadView.model_construct(**lead_document(record, config))


class DirectRoute(APIRoute):
    """A route whose endpoint takes the Request and returns the Response itself.

    FastAPI still documents it (declared parameters, response model, errors) but does not solve parameters
    or serialize a return value on each request: on GET /leads/{id} that machinery cost as much as reading,
    decoding and rendering the lead.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


_MAX_LEAD_ID = MAX_ID_LENGTH
_LEAD_ID = re.compile(LEAD_ID_PATTERN)
_LEAD_PARAMETERS = [
    {
        "name": "lead_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": _MAX_LEAD_ID, "pattern": LEAD_ID_PATTERN},
    },
    {
        "name": "reasons",
        "in": "query",
        "required": False,
        "description": "explain the score: top positive and negative features",
        "schema": {"type": "boolean", "default": True},
    },
    {
        "name": "fresh",
        "in": "query",
        "required": False,
        "description": "also score as of now (decay applied at read time)",
        "schema": {"type": "boolean", "default": False},
    },
]
# What FastAPI (pydantic) accepts as a boolean query value.
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _flag(query: QueryParams, name: str, *, default: bool) -> bool:
    value = query.get(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise HTTPException(422, f"query.{name}: {value[:40]!r} is not a boolean (true or false)")


def error_response(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "message": message})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    config = settings.service_config

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings)
        # Refuse to start on a model that does not fit the config: fail here, not on the first request.
        try:
            scorer = await active_scorer(settings, store)
        except ModelRefused:
            await store.close()
            raise
        service = ServiceState(settings, store, scorer, config)
        app.state.service = service
        metrics.MODEL_INFO.info({"version": scorer.version, "config_hash": scorer.metadata.config_hash})

        def swap(new: Scorer) -> None:
            service.scorer = new

        watcher = ActiveModelWatcher(
            ModelStore(store.redis), config.features, scorer.version, swap, settings.model_poll_seconds
        )
        stop = asyncio.Event()
        watching = asyncio.create_task(watcher.run(stop))
        try:
            yield
        finally:
            stop.set()
            await watching
            await store.close()

    # FastAPIOffline builds a plain FastAPI app whose /docs and /redoc pages load Swagger UI and ReDoc from files
    # shipped in the fastapi-offline wheel (mounted at _DOCS_ASSETS), not from a CDN: the docs work offline.
    app = FastAPIOffline(
        title="leadscore",
        version="0.1.0",
        description="Real-time lead scores, segments and the reasons behind them.",
        lifespan=lifespan,
        static_url=_DOCS_ASSETS,
    )
    _install_error_handlers(app)
    _install_middleware(app, settings)

    async def get_lead(request: Request) -> Response:
        """A lead's score, segments, event counts, features, profile and the reasons behind its score."""
        # The busiest route reads its parameters itself (documented by _LEAD_PARAMETERS) and renders
        # its own body: see DirectRoute.
        service: ServiceState = request.app.state.service
        lead_id = request.path_params["lead_id"]
        if len(lead_id) > _MAX_LEAD_ID or not _LEAD_ID.fullmatch(lead_id):
            raise HTTPException(
                422, f"path.lead_id: must be 1 to {_MAX_LEAD_ID} characters without whitespace or control characters"
            )
        query = request.query_params
        reasons = _flag(query, "reasons", default=True)
        fresh = _flag(query, "fresh", default=False)
        record = await service.store.get(lead_id)
        if record is None:
            raise HTTPException(404, f"no lead {lead_id!r}: no event for it has been processed")
        document = lead_document(
            record,
            service.config,
            service.scorer,
            reasons=service.settings.api_reasons if reasons else 0,
            fresh_at_ms=time.time_ns() // 1_000_000 if fresh else None,
        )
        return Response(render_lead(document), media_type="application/json")

    app.router.add_api_route(
        "/leads/{lead_id}",
        get_lead,
        methods=["GET"],
        responses=_ERRORS,
        tags=["leads"],
        response_model=LeadView,
        openapi_extra={"parameters": _LEAD_PARAMETERS},
        route_class_override=DirectRoute,
    )

    @app.get("/leads/{lead_id}/history", responses=_ERRORS, tags=["leads"])
    async def lead_history(
        lead_id: LeadId, service: ServiceDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> HistoryView:
        """How the lead's score and segments changed, newest first, with the model and what triggered each."""
        entries = await service.store.history(lead_id, limit)
        if not entries and await service.store.get(lead_id) is None:
            raise HTTPException(404, f"no lead {lead_id!r}: no event for it has been processed")
        return HistoryView(lead_id=lead_id, entries=[HistoryEntry.model_validate_json(entry) for entry in entries])

    @app.post("/leads/batch-get", responses=_BODY_ERRORS, tags=["leads"])
    async def batch_get(body: BatchGetRequest, service: ServiceDep) -> BatchGetView:
        """Many leads in one call (for sync jobs), without reasons; one Redis round trip."""
        wanted = list(dict.fromkeys(body.lead_ids))
        records = await service.store.load_many(wanted)
        return BatchGetView(
            leads=[lead_view(records[lead], service.config) for lead in wanted if lead in records],
            missing=[lead for lead in wanted if lead not in records],
        )

    @app.get("/segments", tags=["segments"], responses=_ERRORS)
    async def list_segments(service: ServiceDep) -> SegmentsView:
        """Every segment set with its segments' definitions (in rule order) and current sizes."""
        segment_sets = service.config.segments
        sizes = await service.store.segment_sizes(
            (name, rule.name) for name, rules in segment_sets.sets.items() for rule in rules.rules
        )
        return SegmentsView(
            sets=[
                SegmentSetView(
                    name=name,
                    primary=name == segment_sets.primary,
                    segments=[
                        SegmentInfo(
                            name=rule.name,
                            description=rule.description,
                            rule=rule.when.model_dump(exclude_none=True),
                            stay_while=rule.stay_while.model_dump(exclude_none=True) if rule.stay_while else None,
                            size=sizes[(name, rule.name)],
                        )
                        for rule in rules.rules
                    ],
                )
                for name, rules in segment_sets.sets.items()
            ]
        )

    async def ranked_page(
        service: ServiceState,
        segment_set: str,
        segment: str,
        limit: int,
        cursor: str | None,
        min_score: float | None,
        active_since: datetime | None,
    ) -> SegmentLeadsPage:
        sets = service.config.segments
        if segment_set not in sets:
            raise HTTPException(404, f"no segment set {segment_set!r}; GET /segments lists them")
        if segment not in sets[segment_set].names:
            raise HTTPException(404, f"no segment {segment!r} in set {segment_set!r}; GET /segments lists them")
        leads: list[tuple[str, float]] = []
        next_cursor = cursor
        # The ceiling: an event's whole millisecond must be at or after the instant. Exact where a float
        # timestamp would round, and no overflow for an offset that puts the instant past year 9999.
        since_ms = None if active_since is None else -((_EPOCH - active_since) // _ONE_MS)
        try:
            # With an activity filter a page may need several reads; bounded so one request stays cheap.
            for _ in range(_MAX_FILTER_READS):
                page = await service.store.segment_page(
                    segment_set, segment, limit - len(leads), next_cursor, min_score
                )
                if since_ms is None:
                    leads += page.leads
                else:
                    records = await service.store.load_many([lead for lead, _ in page.leads])
                    leads += [
                        (lead, s)
                        for lead, s in page.leads
                        if lead in records and records[lead].state.anchor_ms >= since_ms
                    ]
                next_cursor = page.next_cursor
                if next_cursor is None or len(leads) >= limit:
                    break
        except InvalidCursor as exc:
            raise HTTPException(422, str(exc)) from None
        return SegmentLeadsPage(
            segment_set=segment_set,
            segment=segment,
            leads=[RankedLead(lead_id=lead, score=score) for lead, score in leads],
            next_cursor=next_cursor,
        )

    @app.get("/segments/{segment_set}/{segment}/leads", tags=["segments"], responses=_ERRORS)
    async def segment_set_leads(
        segment_set: Annotated[str, Path(max_length=100)],
        segment: Annotated[str, Path(max_length=100)],
        service: ServiceDep,
        limit: Limit = 100,
        cursor: Cursor = None,
        min_score: MinScore = None,
        active_since: ActiveSince = None,
    ) -> SegmentLeadsPage:
        """A segment's leads ranked by score (highest first), a page at a time, optionally filtered."""
        return await ranked_page(service, segment_set, segment, limit, cursor, min_score, active_since)

    @app.get("/segments/{segment}/leads", tags=["segments"], responses=_ERRORS)
    async def segment_leads(
        segment: Annotated[str, Path(max_length=100)],
        service: ServiceDep,
        limit: Limit = 100,
        cursor: Cursor = None,
        min_score: MinScore = None,
        active_since: ActiveSince = None,
    ) -> SegmentLeadsPage:
        """The same, for a segment of the primary segment set."""
        primary = service.config.segments.primary
        return await ranked_page(service, primary, segment, limit, cursor, min_score, active_since)

    @app.get("/", include_in_schema=False)
    async def home(request: Request) -> RedirectResponse:
        """A browser opening the service lands on the interactive API docs: 307 to /docs."""
        return RedirectResponse(f"{request.scope.get('root_path', '')}/docs", status_code=307)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> HealthView:
        """The process is alive."""
        return HealthView(status="ok")

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ReadyView}})
    async def readyz(service: ServiceDep) -> JSONResponse:
        """Ready to serve: Redis answers and a model is loaded (503 otherwise)."""
        try:
            redis_ok = await service.store.ping()
        except STORE_UNAVAILABLE:
            metrics.REDIS_ERRORS.labels("ping").inc()
            redis_ok = False
        ready = redis_ok and service.scorer is not None
        body = ReadyView(
            status="ready" if ready else "unavailable", redis=redis_ok, model_version=service.scorer.version
        )
        return JSONResponse(status_code=200 if ready else 503, content=body.model_dump())

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus_metrics(service: ServiceDep) -> Response:
        """Prometheus text exposition (segment sizes read from Redis at scrape time)."""
        names = [(name, rule.name) for name, rules in service.config.segments.sets.items() for rule in rules.rules]
        try:
            for (segment_set, segment), size in (await service.store.segment_sizes(names)).items():
                metrics.SEGMENT_SIZE.labels(segment_set, segment).set(size)
        except STORE_UNAVAILABLE:
            metrics.REDIS_ERRORS.labels("metrics").inc()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        message = _BODY_UNREADABLE if status == 400 and exc.detail == _FASTAPI_BODY_ERROR else str(exc.detail)
        response = error_response(status, _error_kind(status), message)
        response.headers.update(exc.headers or {})  # e.g. Starlette's Allow on a 405
        allowed = _allowed_methods(request.app, request.scope) if status == 405 else None
        if allowed is not None:
            response.headers["Allow"] = allowed
        return response

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
    app.add_exception_handler(StoreError, redis_down)
    app.add_exception_handler(ConnectionError, redis_down)
    app.add_exception_handler(RecordDecodeError, corrupt_record)


# FastAPI's detail for a body it could not decode (e.g. not UTF-8), and what we tell the client instead.
_FASTAPI_BODY_ERROR = "There was an error parsing the body"
_BODY_UNREADABLE = "the body could not be read: send JSON encoded as UTF-8 (Content-Type: application/json)"
# Names clients already know, where they differ from the status' own name.
_ERROR_KINDS = {413: "body_too_large", 422: "invalid_request"}


def _error_kind(status: int) -> str:
    """The `error` field for an HTTP error status: its standard name in snake case (400 -> bad_request)."""
    if status in _ERROR_KINDS:
        return _ERROR_KINDS[status]
    try:
        return HTTPStatus(status).name.lower()
    except ValueError:
        return "error"


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


def _install_middleware(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(GuardAndObserve, api_keys=frozenset(settings.api_keys), max_body=settings.max_request_bytes)


class GuardAndObserve:
    """Plain ASGI middleware (cheaper than BaseHTTPMiddleware on every request): refuses oversized bodies
    and missing API keys with JSON errors, and times each request by route template and status."""

    def __init__(self, app: ASGIApp, *, api_keys: frozenset[str], max_body: int) -> None:
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
                413, _error_kind(413), f"request bodies are limited to {self.max_body} bytes"
            )
        elif self.api_keys and not _is_open(scope["path"]) and _api_key(headers) not in self.api_keys:
            refusal = error_response(401, _error_kind(401), "send a valid X-API-Key header")
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


def _api_key(headers: dict[bytes, bytes]) -> str | None:
    key = headers.get(b"x-api-key")
    return None if key is None else key.decode("latin-1")
