"""LeadStore: the only code that talks to Redis.

Layout (Redis Cluster safe: one lead's data shares the hash tag, nothing needs a cross-key transaction):
  lead:{<lead_id>}        one packed record (app.records) with state, offset fence and score
  segment:<name>          sorted set ranking the segment's leads by score
A batch is one MGET to load and one pipelined round trip (MSET + ZADD/ZREM per segment) to write.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import orjson
from redis.asyncio import Redis

from app.records import LeadRecord, decode_record, encode_record

LEAD_KEY_PREFIX = "lead:"
SEGMENT_KEY_PREFIX = "segment:"
# Paging walks ties at the cursor's score; this caps the extra rows one request may read.
_MAX_TIE_SCAN = 10_000


def lead_key(lead_id: str) -> str:
    return f"{LEAD_KEY_PREFIX}{{{lead_id}}}"


def segment_key(segment: str) -> str:
    return f"{SEGMENT_KEY_PREFIX}{segment}"


class InvalidCursor(ValueError):
    """A pagination cursor that this API did not hand out."""


@dataclass(frozen=True)
class SegmentPage:
    leads: list[tuple[str, float]]
    next_cursor: str | None


# KEYS: one lead key per record. ARGV: six per record (lead id, partition, offset, segment, score, value).
# Segment set keys are derived here, so this script needs the leads and their sets on one Redis node.
_WRITE_BATCH = """
local refused = {}
for i = 1, #KEYS do
  local a = (i - 1) * 6
  local lead, partition, offset, segment = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 4]
  local current = redis.call('GET', KEYS[i])
  local old_partition, old_offset, old_segment
  if current then
    old_partition, old_offset, old_segment = string.match(current, '^%d+|(-?%d+)|(-?%d+)|([^|]*)|')
  end
  if current and old_partition == partition and tonumber(old_offset) >= offset then
    refused[#refused + 1] = i
  else
    redis.call('SET', KEYS[i], ARGV[a + 6])
    if old_segment and old_segment ~= '' and old_segment ~= segment then
      redis.call('ZREM', 'segment:' .. old_segment, lead)
    end
    if segment ~= '' then
      redis.call('ZADD', 'segment:' .. segment, ARGV[a + 5], lead)
    end
  end
end
return refused
"""


class LeadStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._write_script = redis.register_script(_WRITE_BATCH)

    @classmethod
    def from_url(cls, url: str, *, timeout_seconds: float = 2.0) -> LeadStore:
        return cls(
            Redis.from_url(
                url,
                socket_timeout=timeout_seconds,
                socket_connect_timeout=timeout_seconds,
                health_check_interval=30,
            )
        )

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def get(self, lead_id: str) -> LeadRecord | None:
        raw = await self.redis.get(lead_key(lead_id))
        return None if raw is None else decode_record(lead_id, raw)

    async def load_many(self, lead_ids: Sequence[str]) -> dict[str, LeadRecord]:
        """Stored records of the leads that have one (one MGET)."""
        if not lead_ids:
            return {}
        values = await self.redis.mget([lead_key(i) for i in lead_ids])
        return {i: decode_record(i, raw) for i, raw in zip(lead_ids, values, strict=True) if raw is not None}

    async def save_batch(self, records: Sequence[LeadRecord]) -> list[str]:
        """Write records and move them between segment sets in one round trip; returns the refused leads.

        Each record carries its offset fence in the same value, so state and fence are written by one
        SET. A record whose stored offset (same partition) is already at or past ours is refused: that
        write comes from a consumer that lost the partition in a rebalance (a zombie) or repeats one
        already made, and the newer state stays.
        """
        if not records:
            return []
        args: list[str | bytes | float] = []
        for record in records:
            args += [record.lead_id, record.partition, record.offset, record.segment or "", record.score or 0.0]
            args.append(encode_record(record))
        refused = await self._write_script(keys=[lead_key(r.lead_id) for r in records], args=args)
        return [records[int(i) - 1].lead_id for i in refused]

    async def segment_sizes(self, segments: Iterable[str]) -> dict[str, int]:
        names = list(segments)
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.zcard(segment_key(name))
        sizes = await pipe.execute()
        return dict(zip(names, (int(s) for s in sizes), strict=True))

    async def segment_page(self, segment: str, limit: int, cursor: str | None) -> SegmentPage:
        """Leads of a segment by score, highest first; the cursor resumes after the last lead returned."""
        key = segment_key(segment)
        if cursor is None:
            rows = cast(list[tuple[bytes, float]], await self.redis.zrange(key, 0, limit, desc=True, withscores=True))
            return _page(rows, limit)
        after_score, after_lead = decode_cursor(cursor)
        # Equal scores come in reverse lexicographic order of lead id: resume within the tie, then below it.
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(
            key, after_score, after_score, desc=True, byscore=True, offset=0, num=_MAX_TIE_SCAN, withscores=True
        )
        pipe.zrange(key, f"({after_score!r}", "-inf", desc=True, byscore=True, offset=0, num=limit + 1, withscores=True)
        ties, below = await pipe.execute()
        return _page([(m, s) for m, s in ties if m.decode() < after_lead] + below, limit)


def _page(rows: list[tuple[bytes, float]], limit: int) -> SegmentPage:
    leads = [(member.decode(), float(score)) for member, score in rows[:limit]]
    more = len(rows) > limit
    return SegmentPage(leads, encode_cursor(*leads[-1]) if more and leads else None)


def encode_cursor(lead_id: str, score: float) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([score, lead_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        score, lead_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(score), str(lead_id)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise InvalidCursor("cursor is not one this API returned; start again without a cursor") from None
