"""A lead's record as the service keeps it: its feature state, the Kafka offset fence that makes a replayed event
a no-op, its latest score and segments, and the window of recent event ids that catches producer retries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from models.state import LeadState

EVENT_ID_HASH_BYTES = 6


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
        if id_hash not in recent:  # the common case, in C; a hit may straddle two hashes, so check alignment
            return False
        return any(recent[i : i + EVENT_ID_HASH_BYTES] == id_hash for i in range(0, len(recent), EVENT_ID_HASH_BYTES))

    def remember_event(self, id_hash: bytes, window: int) -> None:
        if window > 0:
            self.recent_event_ids = (self.recent_event_ids + id_hash)[-window * EVENT_ID_HASH_BYTES :]
