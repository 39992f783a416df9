"""Routes for operators: liveness, readiness, Prometheus metrics, and `/` sending a browser to the docs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import metrics
from app.api.deps import ConfigDep, ServiceDep, StoreDep
from app.storage.errors import STORE_UNAVAILABLE
from schemas.api import HealthView, ReadyView

router = APIRouter(tags=["ops"])


@router.get("/", include_in_schema=False)
async def home(request: Request) -> RedirectResponse:
    """A browser opening the service lands on the interactive API docs: 307 to /docs."""
    return RedirectResponse(f"{request.scope.get('root_path', '')}/docs", status_code=307)


@router.get("/healthz")
async def healthz() -> HealthView:
    """The process is alive."""
    return HealthView(status="ok")


@router.get("/readyz", responses={503: {"model": ReadyView}})
async def readyz(service: ServiceDep) -> JSONResponse:
    """Ready to serve: Redis answers and a model is loaded (503 otherwise)."""
    try:
        redis_ok = await service.store.ping()
    except STORE_UNAVAILABLE:
        metrics.REDIS_ERRORS.labels("ping").inc()
        redis_ok = False
    # Not "a scorer is set": it always is. What can be lost is the watcher that keeps it the registry's choice.
    ready = redis_ok and service.model_serving
    body = ReadyView(status="ready" if ready else "unavailable", redis=redis_ok, model_version=service.scorer.version)
    return JSONResponse(status_code=200 if ready else 503, content=body.model_dump())


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(store: StoreDep, config: ConfigDep) -> Response:
    """Prometheus text exposition (segment sizes read from Redis at scrape time)."""
    try:
        for (segment_set, segment), size in (await store.segment_sizes(config.segments.names)).items():
            metrics.SEGMENT_SIZE.labels(segment_set, segment).set(size)
    except STORE_UNAVAILABLE:
        metrics.REDIS_ERRORS.labels("metrics").inc()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
