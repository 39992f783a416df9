"""LeadStore: the only code that talks to Redis.

Layout (one lead's record key has a hash tag, `lead:{<id>}`):
  lead:{<lead_id>}          one packed record (app.records): state, offset fence, scores, segments
  segment:<set>:<segment>   sorted set ranking the segment's leads by score
  due:<partition>           sorted set of the partition's leads by the time they are due for a rescore
A batch is one MGET to load and one script call to write: records, segment sets and due index.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import orjson
from redis.asyncio import Redis

from app.records import LeadRecord, decode_record, encode_record, encode_segments

LEAD_KEY_PREFIX = "lead:"
SEGMENT_KEY_PREFIX = "segment:"
# Paging walks ties at the cursor's score; this caps the extra rows one request may read.
_MAX_TIE_SCAN = 10_000


def lead_key(lead_id: str) -> str:
    return f"{LEAD_KEY_PREFIX}{{{lead_id}}}"


def segment_key(segment_set: str, segment: str) -> str:
    return f"{SEGMENT_KEY_PREFIX}{segment_set}:{segment}"


def due_key(partition: int) -> str:
    return f"due:{partition}"


class InvalidCursor(ValueError):
    """A pagination cursor that this API did not hand out."""


@dataclass(frozen=True)
class SegmentPage:
    leads: list[tuple[str, float]]
    next_cursor: str | None


# KEYS: one lead key per record. ARGV[1]: "event" or "sweep"; then seven per record: lead id, partition,
# offset, segments header, score, due time ("" for none), value.
# An event write needs a newer offset than stored (same partition); a sweep write (a rescore with no new
# event) needs the stored offset to be unchanged since it was loaded. Refused writes change nothing.
# Segment and due keys are derived here, so this script needs the leads and those sets on one Redis node.
_WRITE_BATCH = """
local sweep = ARGV[1] == 'sweep'
local refused = {}
for i = 1, #KEYS do
  local a = 1 + (i - 1) * 7
  local lead, partition, offset = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local segments, score, due = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local current = redis.call('GET', KEYS[i])
  local old_partition, old_offset, old_segments
  if current then
    old_partition, old_offset, old_segments = string.match(current, '^%d+|(-?%d+)|(-?%d+)|([^|]*)|')
  end
  local stale
  if sweep then
    stale = not current or old_partition ~= partition or tonumber(old_offset) ~= offset
  else
    stale = current and old_partition == partition and tonumber(old_offset) >= offset
  end
  if stale then
    refused[#refused + 1] = i
    if sweep and (not current or old_partition ~= partition) then
      redis.call('ZREM', 'due:' .. partition, lead)
    end
  else
    redis.call('SET', KEYS[i], ARGV[a + 7])
    local old = {}
    for set, segment in string.gmatch(old_segments or '', '([^,=]+)=([^,]+)') do old[set] = segment end
    for set, segment in string.gmatch(segments, '([^,=]+)=([^,]+)') do
      if old[set] and old[set] ~= segment then
        redis.call('ZREM', 'segment:' .. set .. ':' .. old[set], lead)
      end
      old[set] = nil
      redis.call('ZADD', 'segment:' .. set .. ':' .. segment, score, lead)
    end
    for set, segment in pairs(old) do
      redis.call('ZREM', 'segment:' .. set .. ':' .. segment, lead)
    end
    if old_partition and old_partition ~= partition then
      redis.call('ZREM', 'due:' .. old_partition, lead)
    end
    if due ~= '' then
      redis.call('ZADD', 'due:' .. partition, due, lead)
    else
      redis.call('ZREM', 'due:' .. partition, lead)
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

    async def save_batch(self, records: Sequence[LeadRecord], *, sweep: bool = False) -> list[str]:
        """Write records, their segment memberships and due times in one round trip; returns refused leads.

        Each record carries its offset fence in the same value, so state and fence are written by one
        SET. An event write whose offset is not newer than the stored one (same partition) is refused:
        it comes from a consumer that lost the partition in a rebalance (a zombie) or repeats a write
        already made, and the newer state stays. A sweep write is refused if an event write got there
        first since the sweeper loaded the lead.
        """
        if not records:
            return []
        args: list[str | bytes | float | int] = ["sweep" if sweep else "event"]
        for record in records:
            args += [record.lead_id, record.partition, record.offset, encode_segments(record.segments)]
            args += [record.score or 0.0, "" if record.due_ms is None else record.due_ms, encode_record(record)]
        refused = await self._write_script(keys=[lead_key(r.lead_id) for r in records], args=args)
        return [records[int(i) - 1].lead_id for i in refused]

    async def due_leads(self, partition: int, now_ms: int, limit: int) -> dict[str, int]:
        """Leads of a partition whose due time has come, earliest first, with their due times."""
        rows = cast(
            list[tuple[bytes, float]],
            await self.redis.zrange(
                due_key(partition), "-inf", now_ms, byscore=True, offset=0, num=limit, withscores=True
            ),
        )
        return {member.decode(): int(score) for member, score in rows}

    async def forget_due(self, partition: int, lead_ids: Sequence[str]) -> None:
        if lead_ids:
            await self.redis.zrem(due_key(partition), *lead_ids)

    async def due_count(self, partition: int, now_ms: int) -> int:
        return int(await self.redis.zcount(due_key(partition), "-inf", now_ms))

    async def segment_sizes(self, segments: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Current size of each (segment set, segment)."""
        names = list(segments)
        pipe = self.redis.pipeline(transaction=False)
        for segment_set, segment in names:
            pipe.zcard(segment_key(segment_set, segment))
        sizes = await pipe.execute()
        return dict(zip(names, (int(s) for s in sizes), strict=True))

    async def segment_page(
        self, segment_set: str, segment: str, limit: int, cursor: str | None, min_score: float | None = None
    ) -> SegmentPage:
        """Leads of a segment by score, highest first; the cursor resumes after the last lead returned.

        The cursor is the last (score, lead) returned, so a page is stable under concurrent writes: a
        lead is never returned twice, and one whose score moved across the cursor is simply met or not.
        """
        key = segment_key(segment_set, segment)
        floor: str | float = "-inf" if min_score is None else min_score
        if cursor is None:
            rows = cast(
                list[tuple[bytes, float]],
                await self.redis.zrange(
                    key, "+inf", floor, desc=True, byscore=True, offset=0, num=limit + 1, withscores=True
                ),
            )
            return _page(rows, limit)
        after_score, after_lead = decode_cursor(cursor)
        # Equal scores come in reverse lexicographic order of lead id: resume within the tie, then below it.
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(
            key, after_score, after_score, desc=True, byscore=True, offset=0, num=_MAX_TIE_SCAN, withscores=True
        )
        pipe.zrange(key, f"({after_score!r}", floor, desc=True, byscore=True, offset=0, num=limit + 1, withscores=True)
        ties, below = await pipe.execute()
        if min_score is not None and after_score < min_score:
            ties = []
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
