"""Segment routes: every segment set's definitions and sizes, and a segment's leads ranked by score.

A segment is named with its set (/segments/{segment_set}/{segment}/leads) or, in the primary set, by itself
(/segments/{segment}/leads): one listing serves both, each path with a dependency that names the segment.
"""

# No `from __future__ import annotations`: FastAPI resolves a string annotation in the module's globals, and the
# listing's `segment` parameter names `named_by`, a variable of the factory below.
import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import StreamingResponse

from app.api.deps import ConfigDep, StoreDep
from app.api.errors import ERROR_RESPONSES
from app.api.params import (
    ActiveSince,
    Cursor,
    Limit,
    MinScore,
    SegmentName,
    SegmentSetName,
    first_epoch_ms_at_or_after,
)
from app.domain.segments import SegmentSets
from app.storage.leads import InvalidCursor, LeadStore
from schemas.api import RankedLead, SegmentInfo, SegmentLeadsPage, SegmentSetView, SegmentsView

router = APIRouter(tags=["segments"], responses=ERROR_RESPONSES)

# With an activity filter a page may need several reads; bounded so one request stays cheap.
_MAX_FILTER_READS = 20


@router.get("/segments")
async def list_segments(store: StoreDep, config: ConfigDep) -> SegmentsView:
    """Every segment set with its segments' definitions (in rule order) and current sizes."""
    segment_sets = config.segments
    sizes = await store.segment_sizes(segment_sets.names)
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


@dataclass(frozen=True)
class SegmentRef:
    """A segment as a listing path names it: its set and its name (not yet checked against the config)."""

    segment_set: str
    segment: str


async def segment_in_set(segment_set: SegmentSetName, segment: SegmentName) -> SegmentRef:
    return SegmentRef(segment_set, segment)


async def segment_in_primary_set(segment: SegmentName, config: ConfigDep) -> SegmentRef:
    return SegmentRef(config.segments.primary, segment)


def check_segment(segment_sets: SegmentSets, segment: SegmentRef) -> None:
    """404 for a segment set or segment the config does not define."""
    if segment.segment_set not in segment_sets:
        raise HTTPException(404, f"no segment set {segment.segment_set!r}; GET /segments lists them")
    if segment.segment not in segment_sets[segment.segment_set].names:
        raise HTTPException(
            404, f"no segment {segment.segment!r} in set {segment.segment_set!r}; GET /segments lists them"
        )


async def ranked_page(
    store: LeadStore,
    segment_sets: SegmentSets,
    segment: SegmentRef,
    limit: int,
    cursor: str | None,
    min_score: float | None,
    active_since: datetime | None,
) -> SegmentLeadsPage:
    """A page of the segment's leads, highest score first, after `cursor`."""
    check_segment(segment_sets, segment)
    since_ms = None if active_since is None else first_epoch_ms_at_or_after(active_since)
    leads: list[tuple[str, float]] = []
    next_cursor = cursor
    try:
        for _ in range(_MAX_FILTER_READS):
            page = await store.segment_page(
                segment.segment_set, segment.segment, limit - len(leads), next_cursor, min_score
            )
            if since_ms is None:
                leads += page.leads
            else:
                records = await store.load_many([lead for lead, _ in page.leads])
                leads += [
                    (lead, s) for lead, s in page.leads if lead in records and records[lead].state.anchor_ms >= since_ms
                ]
            next_cursor = page.next_cursor
            if next_cursor is None or len(leads) >= limit:
                break
    except InvalidCursor as exc:
        raise HTTPException(422, str(exc)) from None
    return SegmentLeadsPage(
        segment_set=segment.segment_set,
        segment=segment.segment,
        leads=[RankedLead(lead_id=lead, score=score) for lead, score in leads],
        next_cursor=next_cursor,
    )


def segment_leads_endpoint(
    named_by: Callable[..., Awaitable[SegmentRef]],
) -> Callable[..., Awaitable[SegmentLeadsPage]]:
    """The listing for a path whose segment `named_by` reads: the path's parameters are `named_by`'s, the query's
    are the same for both paths."""

    async def list_segment_leads(
        segment: Annotated[SegmentRef, Depends(named_by)],
        store: StoreDep,
        config: ConfigDep,
        limit: Limit = 100,
        cursor: Cursor = None,
        min_score: MinScore = None,
        active_since: ActiveSince = None,
    ) -> SegmentLeadsPage:
        # The segment is checked in ranked_page, not in `named_by`: an unknown one is a 404 only once the
        # parameters are valid (a 422 first), as FastAPI validates every parameter before the endpoint runs.
        return await ranked_page(store, config.segments, segment, limit, cursor, min_score, active_since)

    return list_segment_leads


# `name` gives each path its own operation id and summary in the OpenAPI document.
router.add_api_route(
    "/segments/{segment_set}/{segment}/leads",
    segment_leads_endpoint(segment_in_set),
    methods=["GET"],
    name="segment_set_leads",
    description="A segment's leads ranked by score (highest first), a page at a time, optionally filtered.",
)
router.add_api_route(
    "/segments/{segment}/leads",
    segment_leads_endpoint(segment_in_primary_set),
    methods=["GET"],
    name="segment_leads",
    description="The same, for a segment of the primary segment set.",
)


_EXPORT_PAGE = 1000
# A cell starting with one of these is a formula to a spreadsheet: exported with a leading apostrophe (OWASP).
_FORMULA_STARTS = ("=", "+", "-", "@")


@router.get(
    "/segments/{segment_set}/{segment}/leads.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "rank, lead_id, score, last_event_at"}},
)
async def export_segment(
    segment_set: SegmentSetName, segment: SegmentName, store: StoreDep, config: ConfigDep
) -> StreamingResponse:
    """Every lead of a segment as CSV, highest score first: rank, lead_id, score, last_event_at (UTC), read a
    thousand at a time while it streams."""
    check_segment(config.segments, SegmentRef(segment_set, segment))
    size = (await store.segment_sizes([(segment_set, segment)]))[(segment_set, segment)]

    async def rows() -> AsyncIterator[str]:
        yield "rank,lead_id,score,last_event_at\r\n"
        rank, cursor = 0, None
        # bounded: the cursor only moves forward; leads joining meanwhile add a few pages at most
        for _ in range(size // _EXPORT_PAGE + 10):
            page = await store.segment_page(segment_set, segment, _EXPORT_PAGE, cursor)
            records = await store.load_many([lead for lead, _ in page.leads])
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            for lead, score in page.leads:
                rank += 1
                record = records.get(lead)
                last = record.state.anchor_ms if record is not None else 0
                at = datetime.fromtimestamp(last / 1000, tz=UTC).isoformat() if last else ""
                writer.writerow([rank, f"'{lead}" if lead.startswith(_FORMULA_STARTS) else lead, score, at])
            yield buffer.getvalue()
            cursor = page.next_cursor
            if cursor is None:
                break

    filename = f"{segment_set}-{segment}.csv"
    return StreamingResponse(
        rows(), media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
