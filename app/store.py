"""LeadStore: the only code that talks to Redis.

Layout (one lead's record key has a hash tag, `lead:{<id>}`):
  lead:{<lead_id>}          one packed record (app.records): state, offset fence, scores, segments
  segment:<set>:<segment>   sorted set ranking the segment's leads by score
  due:<partition>           sorted set of the partition's leads by the time they are due for a rescore
A batch is one MGET to load and one script call to write: records, segment sets and due index.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterable, Sequence
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


# KEYS: one lead key per record. ARGV[1]: "event" or "sweep"; ARGV[2]: history length kept; then two per
# record: the value (app.records: its header has partition, offset, segments, score, due time) and a score
# history entry ("" for none). Two arguments per lead keep the client's command packing cheap.
# An event write needs a newer offset than stored (same partition); a sweep write (a rescore with no new
# event) needs the stored offset to be unchanged since it was loaded. Refused writes change nothing.
# Segment and due keys are derived here, so this script needs the leads and those sets on one Redis node.
_WRITE_BATCH = """
local sweep = ARGV[1] == 'sweep'
local history_length = tonumber(ARGV[2])
local header = '^%d+|(-?%d+)|(-?%d+)|([^|]*)|([^|]*)|([^|]*)|'
local refused = {}
for i = 1, #KEYS do
  local value, history = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  local lead = string.sub(KEYS[i], 7, -2)
  local partition, offset, segments, score, due = string.match(value, header)
  offset = tonumber(offset)
  local current = redis.call('GET', KEYS[i])
  local old_partition, old_offset, old_segments
  if current then
    old_partition, old_offset, old_segments = string.match(current, header)
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
    redis.call('SET', KEYS[i], value)
    if history ~= '' and history_length > 0 then
      redis.call('LPUSH', KEYS[i] .. ':history', history)
      redis.call('LTRIM', KEYS[i] .. ':history', 0, history_length - 1)
    end
    local old = {}
    for set, segment in string.gmatch(old_segments or '', '([^,=]+)=([^,]+)') do old[set] = segment end
    for set, segment in string.gmatch(segments, '([^,=]+)=([^,]+)') do
      if old[set] and old[set] ~= segment then
        redis.call('ZREM', 'segment:' .. set .. ':' .. old[set], lead)
      end
      old[set] = nil
      if score ~= '' then
        redis.call('ZADD', 'segment:' .. set .. ':' .. segment, score, lead)
      end
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
    def __init__(self, redis: Redis, *, history_length: int = 50) -> None:
        self.redis = redis
        self.history_length = history_length
        self._write_script = redis.register_script(_WRITE_BATCH)
        self._pending_reads: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self._read_tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, *, timeout_seconds: float = 2.0, history_length: int = 50) -> LeadStore:
        client = Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds, health_check_interval=30
        )
        return cls(client, history_length=history_length)

    async def history(self, lead_id: str, limit: int) -> list[bytes]:
        """The lead's score history, newest first (JSON entries written with its records)."""
        return [_bytes(entry) for entry in await self.redis.lrange(f"{lead_key(lead_id)}:history", 0, limit - 1)]

    async def lead_ids(self, count: int = 1000) -> AsyncIterator[list[str]]:
        """Every stored lead id, a SCAN page at a time (no blocking KEYS)."""
        prefix = len(LEAD_KEY_PREFIX) + 1
        cursor = 0
        while True:
            cursor, keys = await self.redis.scan(cursor, match=f"{LEAD_KEY_PREFIX}{{*}}", count=count)
            ids = [_text(key)[prefix:-1] for key in keys]
            if ids:
                yield ids
            if cursor == 0:
                return

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def get(self, lead_id: str) -> LeadRecord | None:
        """One lead's record. Concurrent calls are coalesced into one MGET per event-loop turn: the Redis
        client's per-command cost, not Redis, is what limits a busy API."""
        if not self._pending_reads:
            asyncio.get_running_loop().call_soon(self._flush_reads)
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._pending_reads.append((lead_id, future))
        raw = await future
        return None if raw is None else decode_record(lead_id, raw)

    def _flush_reads(self) -> None:
        pending, self._pending_reads = self._pending_reads, []
        task = asyncio.ensure_future(self._read_many(pending))
        self._read_tasks.add(task)
        task.add_done_callback(self._read_tasks.discard)

    async def _read_many(self, pending: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        try:
            values = await self.redis.mget([lead_key(lead_id) for lead_id, _ in pending])
        except BaseException as exc:  # every waiting request gets the error (a 503), none hangs
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), raw in zip(pending, values, strict=True):
            if not future.done():
                future.set_result(None if raw is None else _bytes(raw))

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
        args: list[str | bytes | int] = ["sweep" if sweep else "event", self.history_length]
        for record in records:
            args += [encode_record(record), record.history_entry or b""]
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


MODEL_INDEX_KEY = "models"
ACTIVE_MODEL_KEY = "model:active"


def model_key(version: str) -> str:
    return f"model:{version}"


@dataclass(frozen=True)
class StoredModel:
    version: str
    model_text: str
    metadata_json: bytes


class ModelStore:
    """The model registry in Redis: every registered artifact, and which version is active.

    Keeping artifacts in Redis (a LightGBM text model is well under a few MB) lets every API and consumer
    process, on any host, pick up an activation without a shared file system.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def register(self, version: str, model_text: str, metadata_json: bytes, trained_at_ms: int) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(model_key(version), mapping={"model": model_text, "metadata": metadata_json})
        pipe.zadd(MODEL_INDEX_KEY, {version: trained_at_ms})
        await pipe.execute()

    async def versions(self) -> list[str]:
        """Registered versions, newest training first."""
        return [_text(v) for v in cast(list[bytes], await self.redis.zrange(MODEL_INDEX_KEY, 0, -1, desc=True))]

    async def metadata(self, version: str) -> bytes | None:
        raw = await self.redis.hget(model_key(version), "metadata")
        return None if raw is None else _bytes(raw)

    async def get(self, version: str) -> StoredModel | None:
        model_text, metadata_json = await self.redis.hmget(model_key(version), ["model", "metadata"])
        if model_text is None or metadata_json is None:
            return None
        return StoredModel(version, _text(model_text), _bytes(metadata_json))

    async def active(self) -> str | None:
        raw = await self.redis.get(ACTIVE_MODEL_KEY)
        return None if raw is None else _text(raw)

    async def activate(self, version: str) -> None:
        await self.redis.set(ACTIVE_MODEL_KEY, version)


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
