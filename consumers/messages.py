"""Turning a Kafka message into an event, or into a rejection with a reason for the dead-letter topic.

A message is parsed by msgspec first, with Event's rules: about 1 µs against pydantic's 6, a sixth of what the
consumer spent per event on parsing. Whatever that parse does not accept as it stands (and any timestamp out of
range) goes to the Event model itself, which accepts or rejects it with its own message: the fast parse only ever
accepts what Event accepts, with the same values (tests/unit/test_messages.py holds the two together).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from pydantic import ValidationError

from schemas.events import (
    LEAD_ID_PATTERN,
    MAX_ID_LENGTH,
    MAX_TS_MS,
    MAX_TYPE_LENGTH,
    TYPE_PATTERN,
    EngagementEvent,
    Event,
    parse_timestamp_ms,
)


def _whole(pattern: str) -> str:
    # msgspec searches with Python's `re`, whose `$` also matches before a final newline; pydantic's does not.
    assert pattern.startswith("^") and pattern.endswith("$")
    return pattern[:-1] + r"\Z"


class _WireEvent(msgspec.Struct):
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
    lead_id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH, pattern=_whole(LEAD_ID_PATTERN))]
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TYPE_LENGTH, pattern=_whole(TYPE_PATTERN))]
    ts: int | float | str
    properties: dict[str, Any] = {}


class ParsedEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as the fast parse gives it: Event's fields and values, without a pydantic model's cost."""

    event_id: str
    lead_id: str
    type: str
    ts: int
    properties: dict[str, Any]


_decode_wire = msgspec.json.Decoder(_WireEvent).decode


def parse_event(value: bytes) -> EngagementEvent:
    """The event in a message's value; raises pydantic's ValidationError, as Event does, if it is not one."""
    try:
        wire = _decode_wire(value)
        ts = wire.ts if type(wire.ts) is int else parse_timestamp_ms(wire.ts)
    except (msgspec.DecodeError, ValueError):
        return Event.model_validate_json(value)
    if not 0 <= ts <= MAX_TS_MS:
        return Event.model_validate_json(value)
    return ParsedEvent(wire.event_id, wire.lead_id, wire.type, ts, wire.properties)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # a metric label: too_large, invalid_json, invalid_event, key_mismatch, ts_out_of_range
    detail: str


@dataclass(frozen=True, slots=True)
class AcceptedTime:
    """The event-time range accepted, relative to now: far past or future timestamps are producer bugs."""

    max_age_ms: int
    max_future_ms: int

    def check(self, ts_ms: int, now_ms: int) -> str | None:
        if ts_ms < now_ms - self.max_age_ms:
            return f"ts is more than {self.max_age_ms / 86_400_000:g} days in the past"
        if ts_ms > now_ms + self.max_future_ms:
            return f"ts is more than {self.max_future_ms / 1000:g} s in the future"
        return None


def parse_message(
    key: bytes | None,
    value: bytes | None,
    max_bytes: int,
    accepted: AcceptedTime | None = None,
    now_ms: int = 0,
) -> EngagementEvent | Rejection:
    if value is None:
        return Rejection("invalid_event", "message has no value")
    if len(value) > max_bytes:
        return Rejection("too_large", f"message is {len(value)} bytes; the limit is {max_bytes}")
    try:
        event = parse_event(value)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return Rejection("invalid_json", "value is not valid JSON")
        return Rejection("invalid_event", _summarise(exc))
    if key is None:
        return Rejection("key_mismatch", "message has no key; the key must be the lead_id")
    if key != event.lead_id.encode():
        return Rejection("key_mismatch", f"message key {key[:60]!r} differs from lead_id {event.lead_id!r}")
    if accepted is not None and (problem := accepted.check(event.ts, now_ms)):
        return Rejection("ts_out_of_range", problem)
    return event


def _summarise(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:5]]
    return "; ".join(parts)[:500]
