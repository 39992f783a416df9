"""The event wire format: what producers send on the events topic (and to POST /events)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_ID_LENGTH = 200
MAX_TYPE_LENGTH = 64
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant a datetime can hold
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
# A lead id: no whitespace, no control characters. An explicit class, not `\S`: `\s` means something different in
# each engine that reads this pattern (Python `re` counts \x1c-\x1f and \x85, pydantic's Rust `regex` \x85, ECMA-262
# for JSON Schema clients \ufeff). This class reads the same in all three: C0 and C1 controls, DEL, and every ECMA-262
# `\s` (space, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000, U+FEFF), which covers the
# other engines' `\s` too. Python's `$` also matches before a final newline: match it with `fullmatch` there.
LEAD_ID_PATTERN = r"^[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+$"
TYPE_PATTERN = r"^[A-Za-z0-9_.:-]+$"


class Event(BaseModel):
    """One engagement event. `ts` is normalised to epoch milliseconds (UTC)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, description="Producer-unique id.")
    lead_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=LEAD_ID_PATTERN)
    type: str = Field(min_length=1, max_length=MAX_TYPE_LENGTH, pattern=TYPE_PATTERN)
    ts: int = Field(ge=0, le=MAX_TS_MS, description="RFC 3339 timestamp with offset, or epoch milliseconds.")
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, value: Any) -> int:
        return parse_timestamp_ms(value)


class EngagementEvent(Protocol):
    """What the fold and a batch read of an event: an Event, or the consumer's faster-parsed equivalent
    (consumers/messages.py), which holds the same values."""

    @property
    def event_id(self) -> str: ...
    @property
    def lead_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def ts(self) -> int: ...
    @property
    def properties(self) -> Mapping[str, Any]: ...


def parse_timestamp_ms(value: Any) -> int:
    """Epoch milliseconds from an RFC 3339 string (offset required) or an integer of epoch ms."""
    # bool is an int subclass; `true` as a timestamp is a producer bug, not 1 ms after the epoch.
    if isinstance(value, bool):
        raise ValueError("ts must be an RFC 3339 string or epoch milliseconds, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"ts {value[:40]!r} is not an RFC 3339 timestamp") from None
        if parsed.tzinfo is None:
            raise ValueError("ts needs a UTC offset (e.g. '2026-11-22T10:00:00Z'); a local time is ambiguous")
        return (parsed - _EPOCH) // _ONE_MS
    raise ValueError("ts must be an RFC 3339 string or epoch milliseconds")


# The Kafka header that marks a message of the events topic as an erasure request, not an event.
ERASURE_HEADER = "leadscore-erasure"


class ErasureRequest(BaseModel):
    """`DELETE /leads/{lead_id}` puts this on the events topic, keyed by the lead, with the ERASURE_HEADER: the
    consumer owning the lead's partition erases the lead at this point of its events (those before it are erased,
    those after it start a new lead) and publishes a LeadErased change."""

    model_config = ConfigDict(frozen=True)

    erasure_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    lead_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    segments: dict[str, str] = Field(default_factory=dict, description="the lead's segments when it was asked")
    requested_at: datetime
