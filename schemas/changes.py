"""Segment-change events: what subscribers of the `lead-segment-changes` topic receive."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, Field


class Trigger(StrEnum):
    """What made the service rescore a lead."""

    EVENT = "event"  # a new event arrived
    TIME = "time"  # the sweeper: time alone moved its score or segments
    RESCORE = "rescore"  # `leadscore rescore` after a model activation


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
    trigger: Trigger = Field(
        description="event (a new event arrived), time (the sweeper rescored a quiet lead) or rescore (a new model)"
    )
    reasons: list[ReasonView] = Field(default_factory=list, description="the strongest contributors to the score")


def segment_change_json(
    *,
    change_id: str,
    lead_id: str,
    segment_set: str,
    from_segment: str | None,
    to_segment: str,
    score: float,
    at: datetime,
    model_version: str,
    trigger: Trigger,
    reasons: Sequence[dict[str, Any]],
) -> bytes:
    """A SegmentChange as sent on the topic, serialized directly: a batch sends thousands, and building and
    dumping the model costs ~10 µs each. Its keyword arguments are the model's fields (a test holds the two equal,
    and every message it makes validates as a SegmentChange)."""
    return orjson.dumps(
        {
            "change_id": change_id,
            "lead_id": lead_id,
            "segment_set": segment_set,
            "from_segment": from_segment,
            "to_segment": to_segment,
            "score": score,
            "at": at,
            "model_version": model_version,
            "trigger": trigger,
            "reasons": reasons,
        },
        option=orjson.OPT_UTC_Z,
    )
