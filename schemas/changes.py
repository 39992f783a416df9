"""What subscribers of the `lead-segment-changes` topic (and of webhooks) receive, keyed by lead: a SegmentChange
for each real transition of a lead, and a LeadErased when a lead was erased. Their `kind` tells them apart."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, Field, TypeAdapter


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


class ChangeKind(StrEnum):
    SEGMENT_CHANGE = "segment_change"
    LEAD_ERASED = "lead_erased"


class SegmentChange(BaseModel):
    """One real transition of one lead in one segment set. Key on the topic: the lead_id."""

    kind: Literal[ChangeKind.SEGMENT_CHANGE] = ChangeKind.SEGMENT_CHANGE
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


class LeadErased(BaseModel):
    """A lead was erased (`DELETE /leads/{lead_id}`): drop what you hold of it. It follows every SegmentChange of
    the lead made from events before the erasure; a later SegmentChange of the same lead id is a new lead."""

    kind: Literal[ChangeKind.LEAD_ERASED] = ChangeKind.LEAD_ERASED
    change_id: str = Field(description="the erasure's id: a repeat after a crash carries the same id, so drop repeats")
    lead_id: str
    segments: dict[str, str] = Field(
        description="the segment the lead was in, by segment set, when it was erased (empty if it was in none)"
    )
    requested_at: datetime = Field(description="when the erasure was asked for")
    at: datetime = Field(description="when the consumer erased what it had of the lead")


ChangeMessage = Annotated[SegmentChange | LeadErased, Field(discriminator="kind")]
_CHANGE_MESSAGE: TypeAdapter[SegmentChange | LeadErased] = TypeAdapter(ChangeMessage)


def parse_change_message(raw: bytes) -> SegmentChange | LeadErased:
    """A message of the change topic, by its kind (a message without `kind` is a SegmentChange: the format before
    erasures had none). Raises pydantic.ValidationError for anything else."""
    document = orjson.loads(raw)
    if isinstance(document, dict):
        document.setdefault("kind", ChangeKind.SEGMENT_CHANGE.value)
    return _CHANGE_MESSAGE.validate_python(document)


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
    dumping the model costs ~10 µs each. Its keyword arguments are the model's fields but `kind` (a test holds the
    two equal, and every message it makes validates as a SegmentChange)."""
    return orjson.dumps(
        {
            "kind": ChangeKind.SEGMENT_CHANGE,
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
