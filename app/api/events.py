"""`POST /events`: events over HTTP for producers that do not speak Kafka. Each event is checked with the
consumer's own rules and the valid ones are produced to the events topic, acknowledged by the broker before the
answer (202, with a result per event)."""

# No `from __future__ import annotations`: FastAPI resolves the annotations of the route's parameters.

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from app.api.deps import ServiceDep
from app.api.errors import BODY_ERROR_RESPONSES, error_response
from schemas.api import MAX_INGEST_EVENTS, IngestView

router = APIRouter()

# Each event is checked on its own and an invalid one is reported in its result, so the body's schema is only
# its shape: an object, or a list of values; what an event must hold is the Event schema, given as the example.
_BODY_SCHEMA: dict[str, Any] = {
    "description": "an event (README, Event format) or a list of events",
    "anyOf": [{"type": "object"}, {"type": "array", "minItems": 1, "maxItems": MAX_INGEST_EVENTS}],
    "example": [
        {
            "event_id": "e-1",
            "lead_id": "L-1042",
            "type": "page_view",
            "ts": "2026-12-07T10:00:00Z",
            "properties": {"category": "pricing"},
        }
    ],
}


@router.post(
    "/events",
    status_code=202,
    response_model=IngestView,
    responses=BODY_ERROR_RESPONSES | {503: {"description": "the broker did not take the events: send them again"}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _BODY_SCHEMA}}}},
    description=(
        f"One event, or a list of up to {MAX_INGEST_EVENTS}. Each is checked as the consumer checks a Kafka message"
        " (schema, size, timestamp range); the valid ones are produced to the events topic keyed by lead_id and"
        " acknowledged by the broker before this answers. An invalid event is reported in its result and not"
        " produced; the others still are. 503: the broker did not acknowledge them: send the request again (the"
        " consumer applies an event_id once)."
    ),
)
async def post_events(request: Request, service: ServiceDep) -> Any:
    if service.events is None:
        return error_response(503, "unavailable", "this API process takes no events (started without a producer)")
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise HTTPException(400, "the body is not JSON: send one event object or a list of them") from None
    if not isinstance(body, list | dict):
        raise HTTPException(422, "send one event (a JSON object) or a list of events")
    items = body if isinstance(body, list) else [body]
    if not items:
        raise HTTPException(422, "the list holds no event")
    if len(items) > MAX_INGEST_EVENTS:
        raise HTTPException(422, f"{len(items)} events: at most {MAX_INGEST_EVENTS} a request")
    try:
        results = await service.events.submit(items)
    except ConnectionError as exc:
        return error_response(503, "unavailable", str(exc))
    accepted = sum(result.accepted for result in results)
    view = IngestView(accepted=accepted, rejected=len(results) - accepted, results=results)
    return JSONResponse(status_code=202, content=view.model_dump(mode="json"))
