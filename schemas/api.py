"""Response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable kind, e.g. not_found, invalid_request, unavailable")
    message: str = Field(description="what was wrong and what to do about it")


class LeadView(BaseModel):
    lead_id: str
    score: float | None = Field(description="calibrated probability of conversion within the model's horizon")
    segment: str | None
    model_version: str | None = Field(description="the model that produced `score`")
    scored_at: datetime | None = Field(description="when `score` was computed; `features` are as of this time")
    last_event_at: datetime | None = Field(description="event time of the latest event applied")
    first_event_at: datetime | None
    event_counts: dict[str, int] = Field(description="every applied event, counted by its type")
    features: dict[str, float | str | None] = Field(description="the model's inputs as of `scored_at`")
    profile: dict[str, str]


class SegmentInfo(BaseModel):
    name: str
    description: str
    rule: dict[str, object] = Field(description="the rule's condition, as configured")
    size: int = Field(description="leads currently in the segment")


class SegmentsView(BaseModel):
    segments: list[SegmentInfo] = Field(description="in rule order: a lead gets the first that matches")


class RankedLead(BaseModel):
    lead_id: str
    score: float


class SegmentLeadsPage(BaseModel):
    segment: str
    leads: list[RankedLead] = Field(description="highest score first")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class HealthView(BaseModel):
    status: str


class ReadyView(BaseModel):
    status: str = Field(description="ready or unavailable")
    redis: bool
    model_version: str | None
