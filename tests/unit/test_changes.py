"""The segment-change message: serialized straight from its fields, and exactly the documented schema."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

import orjson

from schemas.changes import SegmentChange, Trigger, segment_change_json


def test_the_serializer_takes_exactly_the_schema_fields() -> None:
    parameters = set(inspect.signature(segment_change_json).parameters)
    assert parameters == set(SegmentChange.model_fields) - {"kind"}


def test_a_message_validates_as_the_schema_and_keeps_its_values() -> None:
    at = datetime(2026, 12, 1, 10, 30, 15, 250_000, tzinfo=UTC)
    reasons = [{"feature": "demo_request_decayed", "value": 1.0, "contribution": 0.8, "sentence": "a demo"}]
    raw = segment_change_json(
        change_id="c1",
        lead_id="L-1",
        segment_set="tier",
        from_segment=None,
        to_segment="hot",
        score=0.42,
        at=at,
        model_version="m1",
        trigger=Trigger.TIME,
        reasons=reasons,
    )
    change = SegmentChange.model_validate_json(raw)
    assert change.at == at and change.trigger is Trigger.TIME and change.from_segment is None
    assert change.reasons[0].feature == "demo_request_decayed"
    assert orjson.loads(raw)["at"] == "2026-12-01T10:30:15.250000Z"
    assert orjson.loads(raw)["trigger"] == "time"
