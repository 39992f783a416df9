"""Turning a Kafka message into an Event, or into a rejection with a reason for the dead-letter topic."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from schemas.events import Event


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # a metric label: too_large, invalid_json, invalid_event, key_mismatch
    detail: str


def parse_message(key: bytes | None, value: bytes | None, max_bytes: int) -> Event | Rejection:
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
    return event


def _summarise(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:5]]
    return "; ".join(parts)[:500]
