"""Segment-change events: what subscribers of the `lead-segment-changes` topic receive."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ReasonView(BaseModel):
    feature: str
    value: float | str | None
    contribution: float = Field(description="effect on the score in log-odds; positive raises it")
    sentence: str


class SegmentChange(BaseModel):
    """One real transition of one lead in one segment set. Key on the topic: the lead_id."""

    change_id: str = Field(
        description="stable id of this transition: a repeat after a crash carries the same id, so drop repeats"
    )
    lead_id: str
    segment_set: str
    from_segment: str | None = Field(description="null when the lead is new")
    to_segment: str
    score: float
    at: datetime = Field(description="when the lead was scored into the new segment")
    model_version: str
    trigger: str = Field(description="event (a new event arrived) or time (the sweeper rescored a quiet lead)")
    reasons: list[ReasonView] = Field(default_factory=list, description="the strongest contributors to the score")
