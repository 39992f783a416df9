"""What is happening now, for people watching (the page's overview): events per second, the latest segment
changes, and how the leads' scores are distributed."""

# No `from __future__ import annotations`: FastAPI resolves the annotations of the routes' parameters.

from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, HTTPException, Query

from app.api.deps import ConfigDep, StoreDep
from app.api.errors import ERROR_RESPONSES
from app.storage.leads import ACTIVITY_SECONDS_KEPT
from schemas.api import ActivityView, EventsInSecond, ScoreHistogramView

router = APIRouter(tags=["overview"], responses=ERROR_RESPONSES)


@router.get("/activity")
async def activity(
    store: StoreDep,
    seconds: Annotated[int, Query(ge=1, le=ACTIVITY_SECONDS_KEPT, description="how many seconds back")] = 60,
    changes: Annotated[int, Query(ge=0, le=100, description="how many of the latest segment changes")] = 20,
) -> ActivityView:
    """Events the consumers applied in each of the last seconds, and the latest segment changes (as published on
    the segment-change topic). For display: a batch redone after a crash counts again."""
    per_second, latest = await store.activity(seconds)
    return ActivityView(
        events_per_second=[
            EventsInSecond(at=datetime.fromtimestamp(second, tz=UTC), events=count) for second, count in per_second
        ],
        recent_changes=[orjson.loads(change) for change in latest[:changes]],
    )


@router.get("/scores/histogram")
async def score_histogram(
    store: StoreDep,
    config: ConfigDep,
    segment_set: Annotated[str | None, Query(description="the set to count in; the primary set when absent")] = None,
    bins: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ScoreHistogramView:
    """How many leads score in each of `bins` equal bins of [0, 1]: the score distribution."""
    name = segment_set or config.segments.primary
    if name not in config.segments:
        raise HTTPException(404, f"no segment set {name!r}; GET /segments lists them")
    edges = [i / bins for i in range(bins + 1)]
    counts = await store.score_histogram(name, config.segments[name].names, edges)
    return ScoreHistogramView(segment_set=name, edges=edges, counts=counts, total=sum(counts))
