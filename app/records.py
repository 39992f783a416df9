"""A lead's stored record: its feature state, the Kafka offset fence and the latest score, packed.

One value per lead (`lead:{<id>}`), read with one MGET and written in one round trip per batch:
per-command overhead, not bytes, is what limits a Redis-backed scorer. Layout:

    1|<partition>|<offset>|<set>=<segment>,<set>=<segment>|<score>|<due ms>|{...json...}

The plain-text header carries what the write script (app/store.py) needs without decoding JSON: the
exactly-once fence (a write whose offset is not newer is refused), the segments to move the lead out of
and into, the score to rank it by and its due time. The JSON stays inspectable (`leadscore lead <id>`),
and the leading version lets old values still decode after the layout grows.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.state import LeadState, state_from_wire, state_to_wire

RECORD_VERSION = 1
_HEADER_FIELDS = 6
EVENT_ID_HASH_BYTES = 6


class RecordDecodeError(ValueError):
    """A stored value that is not a lead record this version understands."""


def event_id_hash(event_id: str) -> bytes:
    """6 bytes that stand for an event id in a lead's duplicate window (a false match ~ 1 in 10^13 per check)."""
    return hashlib.blake2b(event_id.encode(), digest_size=EVENT_ID_HASH_BYTES).digest()


@dataclass(slots=True)
class LeadRecord:
    lead_id: str
    state: LeadState = field(default_factory=LeadState)
    partition: int = -1  # Kafka partition and offset of the last applied event: the exactly-once fence
    offset: int = -1
    score: float | None = None
    segments: dict[str, str] = field(default_factory=dict)  # segment set -> segment
    model_version: str | None = None
    scored_ms: int = 0
    recent_event_ids: bytes = b""  # hashes of the last applied event ids, oldest first
    due_ms: int | None = None  # when time alone may next change the score or segments
    history_entry: bytes | None = None  # appended to the lead's score history with this write (not stored)

    def already_applied(self, partition: int, offset: int) -> bool:
        return partition == self.partition and offset <= self.offset

    def seen_event(self, id_hash: bytes) -> bool:
        recent = self.recent_event_ids
        return any(recent[i : i + EVENT_ID_HASH_BYTES] == id_hash for i in range(0, len(recent), EVENT_ID_HASH_BYTES))

    def remember_event(self, id_hash: bytes, window: int) -> None:
        if window > 0:
            self.recent_event_ids = (self.recent_event_ids + id_hash)[-window * EVENT_ID_HASH_BYTES :]


def encode_record(record: LeadRecord) -> bytes:
    body = orjson.dumps(
        {
            "st": state_to_wire(record.state),
            "mv": record.model_version,
            "t": record.scored_ms,
            "r": base64.b64encode(record.recent_event_ids).decode(),
        }
    )
    score = b"" if record.score is None else repr(record.score).encode()
    due = b"" if record.due_ms is None else b"%d" % record.due_ms
    segments = encode_segments(record.segments)
    return b"%d|%d|%d|%s|%s|%s|%s" % (RECORD_VERSION, record.partition, record.offset, segments, score, due, body)


def encode_segments(segments: dict[str, str]) -> bytes:
    return ",".join(f"{name}={segment}" for name, segment in segments.items()).encode()


def decode_segments(header: bytes) -> dict[str, str]:
    return dict(part.split("=", 1) for part in header.decode().split(",")) if header else {}


def decode_record(lead_id: str, raw: bytes | str) -> LeadRecord:
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        version, header = data.split(b"|", 1)
        if int(version) != RECORD_VERSION:
            raise RecordDecodeError(f"lead {lead_id}: record version {int(version)} is not {RECORD_VERSION}")
        partition, offset, segment, score, due, body = header.split(b"|", _HEADER_FIELDS - 1)
        wire: dict[str, Any] = orjson.loads(body)
        return LeadRecord(
            lead_id=lead_id,
            state=state_from_wire(wire["st"]),
            partition=int(partition),
            offset=int(offset),
            score=float(score) if score else None,
            segments=decode_segments(segment),
            due_ms=int(due) if due else None,
            model_version=wire["mv"],
            scored_ms=wire["t"],
            recent_event_ids=base64.b64decode(wire["r"]),
        )
    except RecordDecodeError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RecordDecodeError(f"lead {lead_id}: stored value is not a lead record ({exc})") from None
