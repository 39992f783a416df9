"""Lead routes: one lead's document (GET /leads/{id}, the busiest route), its score history, many leads at once."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.datastructures import QueryParams

from app.api.deps import ConfigDep, ServiceDep, ServiceState, StoreDep
from app.api.documents import lead_document, lead_views, render_lead
from app.api.errors import BODY_ERROR_RESPONSES, ERROR_RESPONSES, error_response
from app.api.params import LeadId
from schemas.api import BatchGetRequest, BatchGetView, ErasureView, HistoryEntry, HistoryView, LeadView
from schemas.events import LEAD_ID_PATTERN, MAX_ID_LENGTH, ErasureRequest

router = APIRouter(tags=["leads"], responses=ERROR_RESPONSES)


class DirectRoute(APIRoute):
    """A route whose endpoint takes the Request and returns the Response itself.

    FastAPI still documents it (declared parameters, response model, errors) but does not solve parameters
    or serialize a return value on each request: on GET /leads/{id} that machinery cost as much as reading,
    decoding and rendering the lead.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


_LEAD_ID = re.compile(LEAD_ID_PATTERN)
# GET /leads/{id}'s parameters as OpenAPI documents them: what LeadId and two boolean queries would declare.
_LEAD_PARAMETERS = [
    {
        "name": "lead_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": LEAD_ID_PATTERN},
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


def _unknown_lead(lead_id: str) -> HTTPException:
    return HTTPException(404, f"no lead {lead_id!r}: no event for it has been processed")


async def get_lead(request: Request) -> Response:
    """A lead's score, segments, event counts, features, profile and the reasons behind its score."""
    # The busiest route reads its parameters itself (documented by _LEAD_PARAMETERS) and renders
    # its own body: see DirectRoute.
    service: ServiceState = request.app.state.service
    lead_id = request.path_params["lead_id"]
    if len(lead_id) > MAX_ID_LENGTH or not _LEAD_ID.fullmatch(lead_id):
        raise HTTPException(
            422, f"path.lead_id: must be 1 to {MAX_ID_LENGTH} characters without whitespace or control characters"
        )
    query = request.query_params
    reasons = _flag(query, "reasons", default=True)
    fresh = _flag(query, "fresh", default=False)
    record = await service.store.get(lead_id)
    if record is None:
        raise _unknown_lead(lead_id)
    document = lead_document(
        record,
        service.config,
        service.scorer,
        reasons=service.settings.api_reasons if reasons else 0,
        fresh_at_ms=time.time_ns() // 1_000_000 if fresh else None,
        features=await service.features(record),
    )
    return Response(render_lead(document), media_type="application/json")


router.add_api_route(
    "/leads/{lead_id}",
    get_lead,
    methods=["GET"],
    response_model=LeadView,
    openapi_extra={"parameters": _LEAD_PARAMETERS},
    route_class_override=DirectRoute,
)


@router.get("/leads/{lead_id}/history")
async def lead_history(
    lead_id: LeadId, store: StoreDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> HistoryView:
    """How the lead's score and segments changed, newest first, with the model and what triggered each."""
    entries = await store.history(lead_id, limit)
    if not entries and await store.get(lead_id) is None:
        raise _unknown_lead(lead_id)
    return HistoryView(lead_id=lead_id, entries=[HistoryEntry.model_validate_json(entry) for entry in entries])


@router.delete(
    "/leads/{lead_id}",
    response_model=ErasureView,
    responses={503: {"description": "the broker did not take the erasure request: nothing was erased, try again"}},
)
async def erase_lead(lead_id: LeadId, service: ServiceDep) -> Any:
    """Erase a lead (admin): its record, score history, segment memberships and due entry are removed now, and a
    `lead_erased` message follows its segment changes on the segment-change topic.

    The request is first put on the events topic among the lead's events (acknowledged by the broker, else 503
    and nothing is erased). The consumer erases again when it reaches it, so events produced before this call
    that it had not processed yet are erased too; events produced after this call start a new lead."""
    store = service.store
    if service.events is None:
        return error_response(503, "unavailable", "this API process cannot erase (started without a producer)")
    record = await store.get(lead_id)
    if record is None and not await store.history(lead_id, 1):
        raise _unknown_lead(lead_id)
    request = ErasureRequest(
        erasure_id=uuid.uuid4().hex,
        lead_id=lead_id,
        segments={} if record is None else record.segments,
        requested_at=datetime.now(UTC),
    )
    try:
        await service.events.request_erasure(request)
    except ConnectionError as exc:
        return error_response(503, "unavailable", f"{exc}; nothing was erased: try again")
    erased = await store.erase(lead_id)
    return ErasureView(
        lead_id=lead_id,
        erasure_id=request.erasure_id,
        segments=erased.segments or request.segments,
        requested_at=request.requested_at,
        change_topic=service.settings.segment_changes_topic,
    )


@router.post("/leads/batch-get", responses=BODY_ERROR_RESPONSES)
async def batch_get(body: BatchGetRequest, store: StoreDep, config: ConfigDep) -> BatchGetView:
    """Many leads in one call (for sync jobs), without reasons; one Redis round trip."""
    wanted = list(dict.fromkeys(body.lead_ids))
    records = await store.load_many(wanted)
    return BatchGetView(
        leads=lead_views([records[lead] for lead in wanted if lead in records], config),
        missing=[lead for lead in wanted if lead not in records],
    )
