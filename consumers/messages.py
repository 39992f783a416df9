"""Turning a Kafka message into an Event, or into a rejection with a reason for the dead-letter topic."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from schemas.events import Event


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
) -> Event | Rejection:
    if value is None:
        return Rejection("invalid_event", "message has no value")
    if len(value) > max_bytes:
        return Rejection("too_large", f"message is {len(value)} bytes; the limit is {max_bytes}")
    try:
        event = Event.model_validate_json(value)
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
