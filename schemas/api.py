"""Response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from schemas.changes import ReasonView
from schemas.events import LEAD_ID_PATTERN, MAX_ID_LENGTH


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable kind, e.g. not_found, invalid_request, unavailable")
    message: str = Field(description="what was wrong and what to do about it")


class CurrentView(BaseModel):
    """The lead re-scored at read time: decay and recency applied up to `as_of`, nothing stored."""

    as_of: datetime
    score: float
    segments: dict[str, str]


class LeadView(BaseModel):
    lead_id: str
    score: float | None = Field(
        description="stored score: calibrated probability of conversion within the model's horizon, as of scored_at"
    )
    segment: str | None = Field(description="the lead's segment in the primary segment set")
    segments: dict[str, str] = Field(description="the lead's segment in every segment set")
    model_version: str | None = Field(description="the model that produced `score`")
    scored_at: datetime | None = Field(description="when `score` was computed; `features` are as of this time")
    last_event_at: datetime | None = Field(description="event time of the latest event applied")
    first_event_at: datetime | None
    event_counts: dict[str, int] = Field(description="every applied event, counted by its type")
    features: dict[str, float | str | None] = Field(description="the model's inputs as of `scored_at`")
    profile: dict[str, str]
    status: Literal["open", "converted", "exited"] = Field(
        default="open",
        description="open; converted (an event of the conversion type was applied); exited (an exit event type was"
        " applied: the lead can no longer convert, its score is 0 and no reasons are given)",
    )
    exited_at: datetime | None = Field(default=None, description="event time of the lead's first exit event")
    invalid_values: dict[str, int] = Field(
        default_factory=dict,
        description="per signal over a numeric property: events whose value was missing or not a number (skipped)",
    )
    reasons: list[ReasonView] | None = Field(
        default=None,
        description="strongest contributors to `score` (top positive, then top negative); with reasons=true",
    )
    raw_score: float | None = Field(default=None, description="the model's raw output (log-odds): bias + contributions")
    bias: float | None = Field(default=None, description="the model's raw output for an average lead (log-odds)")
    current: CurrentView | None = Field(default=None, description="score as of now, with fresh=true")


class SegmentInfo(BaseModel):
    name: str
    description: str
    rule: dict[str, object] = Field(description="the rule's condition, as configured")
    stay_while: dict[str, object] | None = Field(description="hysteresis: a lead in the segment stays while this holds")
    size: int = Field(description="leads currently in the segment")


class SegmentSetView(BaseModel):
    name: str
    primary: bool
    segments: list[SegmentInfo] = Field(description="in rule order: a lead gets the first that matches")


class SegmentsView(BaseModel):
    sets: list[SegmentSetView]


class RankedLead(BaseModel):
    lead_id: str
    score: float


class SegmentLeadsPage(BaseModel):
    segment_set: str
    segment: str
    leads: list[RankedLead] = Field(description="highest score first")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class HealthView(BaseModel):
    status: str


class ReadyView(BaseModel):
    status: str = Field(description="ready or unavailable")
    redis: bool
    model_version: str | None


MAX_BATCH_LEADS = 500


class BatchGetRequest(BaseModel):
    # The events' own lead-id rule: an id no event could carry is a client bug, better a 422 than "missing".
    lead_ids: list[Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=LEAD_ID_PATTERN)]] = Field(
        min_length=1, max_length=MAX_BATCH_LEADS, description=f"at most {MAX_BATCH_LEADS} lead ids"
    )


class BatchGetView(BaseModel):
    leads: list[LeadView] = Field(description="found leads, in request order")
    missing: list[str] = Field(description="requested lead ids with no record")


class HistoryEntry(BaseModel):
    at: datetime = Field(description="when the lead was scored")
    score: float
    segments: dict[str, str]
    model_version: str
    trigger: str = Field(description="event (a new event), time (the sweeper), or rescore (a model activation)")


class HistoryView(BaseModel):
    lead_id: str
    entries: list[HistoryEntry] = Field(description="newest first; an entry when the score moved or a segment changed")


MAX_INGEST_EVENTS = 500


class IngestResult(BaseModel):
    index: int = Field(description="the event's position in the request (0 for a single event)")
    accepted: bool = Field(description="produced to the events topic and acknowledged by the broker")
    event_id: str | None = None
    lead_id: str | None = None
    reason: str | None = Field(
        default=None, description="why it was refused: the dead-letter reasons of the consumer (e.g. invalid_event)"
    )
    message: str | None = None


class IngestView(BaseModel):
    accepted: int = Field(description="events produced (and acknowledged) to the events topic")
    rejected: int = Field(description="events refused; nothing of theirs was produced")
    results: list[IngestResult] = Field(description="one per event, in request order")


class ModelSummary(BaseModel):
    version: str
    active: bool
    trained_at: datetime
    roc_auc: float | None = Field(default=None, description="on the model's test split")
    activated_at: datetime | None = Field(default=None, description="when it was last made active")
    activated_by: str | None = Field(default=None, description="who made it active (the CLI's user@host, or the API)")


class ModelsView(BaseModel):
    active: str | None = Field(description="the version every process serves (they follow it within seconds)")
    models: list[ModelSummary] = Field(description="registered models, newest training first")


class ErasureView(BaseModel):
    """The lead's record, history, segment memberships and due entry are gone."""

    lead_id: str
    erasure_id: str = Field(description="the id the lead_erased change on the segment-change topic will carry")
    segments: dict[str, str] = Field(description="the segment of each set the lead was in")
    requested_at: datetime
    change_topic: str = Field(
        description="where the consumer publishes lead_erased once it reaches the erasure in the lead's events"
    )


class EventsInSecond(BaseModel):
    at: datetime = Field(description="the start of the second")
    events: int = Field(description="events the consumers applied in it")


class ActivityView(BaseModel):
    events_per_second: list[EventsInSecond] = Field(
        description="the last `seconds` seconds, oldest first; the last one is the current second, still counting"
    )
    recent_changes: list[dict[str, Any]] = Field(
        description="the latest segment changes, newest first, as published on the segment-change topic"
    )


class ScoreHistogramView(BaseModel):
    segment_set: str = Field(description="the set whose sorted sets were counted (every lead is in one of them)")
    edges: list[float] = Field(description="bin edges: bin i holds scores in [edges[i], edges[i+1]), the last one ≤ 1")
    counts: list[int]
    total: int


class ActiveModelView(BaseModel):
    version: str
    trained_at: datetime
    activated_at: datetime | None = None
    activated_by: str | None = None
    metrics: dict[str, float | None] = Field(description="on the model's test split")
    files: list[str] = Field(description="the evaluation report and plots: GET /model/files/{name}")
