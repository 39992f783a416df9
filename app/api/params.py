"""Request parameters the routes declare: lead and segment names, paging, and RFC 3339 times in a query."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Path, Query
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from schemas.events import LEAD_ID_PATTERN, MAX_ID_LENGTH

LeadId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=LEAD_ID_PATTERN)]
SegmentSetName = Annotated[str, Path(max_length=100)]
SegmentName = Annotated[str, Path(max_length=100)]
Limit = Annotated[int, Query(ge=1, le=1000, description="leads per page")]
Cursor = Annotated[str | None, Query(max_length=2000, description="next_cursor of the previous page")]
MinScore = Annotated[float | None, Query(ge=0, le=1, description="only leads scoring at least this")]

_RFC3339 = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt](?P<time>[0-9]{2}:[0-9]{2}):(?P<second>[0-9]{2})(?P<fraction>\.[0-9]+)?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_LONG_AGO = datetime.min.replace(tzinfo=UTC)
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)  # later than any event (schemas.events.MAX_TS_MS)


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 date-time, offset required: exactly what the schema's `format: date-time` admits.

    Stricter than pydantic's datetime, which also takes a bare date, epoch seconds or a local time; the
    events' `ts` refuses a local time too, and clients that validate against the schema expect the same.
    """
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError(f"{value[:40]!r} is not an RFC 3339 date-time (e.g. 2026-11-22T10:00:00Z)")
    if match["offset"] is None:
        raise ValueError(
            f"{value[:40]!r} needs a UTC offset, Z or +01:00 (e.g. 2026-11-22T10:00:00Z): a local time is ambiguous"
        )
    # Year 0 is valid RFC 3339 but not a Python date: check the rest in 2000 (a leap year too), then read it
    # as the distant past, which as a lower bound admits every event just as year 0 would.
    year_zero = match["date"].startswith("0000")
    date = "2000" + match["date"][4:] if year_zero else match["date"]
    leap = match["second"] == "60"
    second = "59" if leap else match["second"]
    offset = match["offset"].upper().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(f"{date}T{match['time']}:{second}{match['fraction'] or ''}{offset}")
    except ValueError as exc:
        raise ValueError(f"{value[:40]!r} is not a valid date-time: {exc}") from None
    if leap:
        # RFC 3339 admits a leap second only as a UTC day's last; it then reads as the next day's first instant.
        if (parsed - _EPOCH) // timedelta(seconds=1) % 86_400 != 86_399:
            raise ValueError(f"{value[:40]!r} is not a valid date-time: a leap second ends a UTC day")
        try:
            parsed += timedelta(seconds=1)
        except OverflowError:
            return _END_OF_TIME
    return _LONG_AGO if year_zero else parsed


def first_epoch_ms_at_or_after(instant: datetime) -> int:
    """The first whole epoch millisecond at or after `instant`: an event's millisecond timestamp is at or after
    the instant exactly when it is at least this. Exact where a float timestamp would round, and no overflow for
    an offset that puts the instant past year 9999."""
    return -((_EPOCH - instant) // _ONE_MS)


def _rfc3339_query(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        # A custom error type: pydantic would prefix a ValueError's message with "Value error, ".
        raise PydanticCustomError("rfc3339", str(exc)) from None


ActiveSince = Annotated[
    datetime | None,
    BeforeValidator(_rfc3339_query),
    Query(
        description="only leads with an event at or after this time: an RFC 3339 date-time with a UTC offset, "
        "Z or +01:00 (e.g. 2026-11-22T10:00:00Z); a time without an offset is refused (422)"
    ),
]
