"""A lead's stored record: its feature state, the Kafka offset fence and the latest score, packed.

One value per lead (`lead:{<id>}`), read with one MGET and written with one MSET per batch: per-command
overhead, not bytes, is what limits a Redis-backed scorer. The value is versioned JSON so it stays
inspectable (`leadscore lead <id>`) and old values still decode after the layout grows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from models.state import LeadState, state_from_wire, state_to_wire

RECORD_VERSION = 1


class RecordDecodeError(ValueError):
    """A stored value that is not a lead record this version understands."""


@dataclass(slots=True)
class LeadRecord:
    lead_id: str
    state: LeadState = field(default_factory=LeadState)
    partition: int = -1  # Kafka partition and offset of the last applied event: the exactly-once fence
    offset: int = -1
    score: float | None = None
    segment: str | None = None
    model_version: str | None = None
    scored_ms: int = 0

    def already_applied(self, partition: int, offset: int) -> bool:
        return partition == self.partition and offset <= self.offset


def encode_record(record: LeadRecord) -> bytes:
    return orjson.dumps(
        {
            "v": RECORD_VERSION,
            "st": state_to_wire(record.state),
            "o": [record.partition, record.offset],
            "sc": record.score,
            "sg": record.segment,
            "mv": record.model_version,
            "t": record.scored_ms,
        }
    )


def decode_record(lead_id: str, raw: bytes | str) -> LeadRecord:
    try:
        wire: dict[str, Any] = orjson.loads(raw)
        version = wire.get("v")
        if version != RECORD_VERSION:
            raise RecordDecodeError(f"lead {lead_id}: record version {version!r} is not {RECORD_VERSION}")
        partition, offset = wire["o"]
        return LeadRecord(
            lead_id=lead_id,
            state=state_from_wire(wire["st"]),
            partition=partition,
            offset=offset,
            score=wire["sc"],
            segment=wire["sg"],
            model_version=wire["mv"],
            scored_ms=wire["t"],
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, RecordDecodeError):
            raise
        raise RecordDecodeError(f"lead {lead_id}: stored value is not a lead record ({exc})") from None
