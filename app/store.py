"""LeadStore: the only code that talks to Redis.

Layout (one lead's record key has a hash tag, `lead:{<id>}`):
  lead:{<lead_id>}          one packed record (app.records): state, offset fence, scores, segments
  segment:<set>:<segment>   sorted set ranking the segment's leads by score
  due:<partition>           sorted set of the partition's leads by the time they are due for a rescore
  record-layout:<hex>       the names of a record layout (app.records.RecordLayout), by its fingerprint
A batch is one MGET to load and one script call to write: records, segment sets and due index.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis as sync_redis
from redis.asyncio import Redis

from app.records import LeadRecord, RecordCodec, RecordDecodeError, RecordLayout, UnknownRecordLayout, default_codec
from models.spec import FeatureSpec

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


def layout_key(fingerprint: bytes) -> str:
    return f"record-layout:{fingerprint.hex()}"


class InvalidCursor(ValueError):
    """A pagination cursor that this API did not hand out."""


@dataclass(frozen=True)
class SegmentPage:
    leads: list[tuple[str, float]]
    next_cursor: str | None


# KEYS: one lead key per record. ARGV[1]: "event" or "sweep"; ARGV[2]: history length kept; ARGV[3]: one blob
# holding, per record in KEYS order, the value (app.records: its header has partition, offset, segments,
# score, due time) and a score history entry ("" for none), each as a 4-byte little-endian length and the
# bytes. One blob argument keeps the client's command packing cheap (its cost is per argument). ARGV[4] and
# ARGV[5]: the key and names of the records' layout, set if missing.
# An event write needs a newer offset than stored (same partition); a sweep write (a rescore with no new
# event) needs the stored offset to be unchanged since it was loaded. Refused writes change nothing.
# Segment and due keys are derived here, so this script needs the leads and those sets on one Redis node.
_WRITE_BATCH = """
local sweep = ARGV[1] == 'sweep'
local history_length = tonumber(ARGV[2])
local blob = ARGV[3]
-- the records' layout, kept in Redis with them (also after a flush while this process runs)
redis.call('SET', ARGV[4], ARGV[5], 'NX')
local pos = 1
local header = '^%d+|(-?%d+)|(-?%d+)|([^|]*)|([^|]*)|([^|]*)|'
local refused = {}
for i = 1, #KEYS do
  local value, history
  value, history, pos = struct.unpack('<I4c0I4c0', blob, pos)
  local lead = string.sub(KEYS[i], 7, -2)
  local partition, offset, segments, score, due = string.match(value, header)
  offset = tonumber(offset)
  local current = redis.call('GET', KEYS[i])
  local old_partition, old_offset, old_segments, old_score, old_due
  if current then
    old_partition, old_offset, old_segments, old_score, old_due = string.match(current, header)
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
      local was = old[set]
      if was and was ~= segment then
        redis.call('ZREM', 'segment:' .. set .. ':' .. was, lead)
      end
      old[set] = nil
      -- the set already ranks the lead by this score when neither segment nor score changed
      if score ~= '' and (was ~= segment or old_score ~= score) then
        redis.call('ZADD', 'segment:' .. set .. ':' .. segment, score, lead)
      end
    end
    for set, segment in pairs(old) do
      redis.call('ZREM', 'segment:' .. set .. ':' .. segment, lead)
    end
    local moved = old_partition ~= partition
    if old_partition and moved then
      redis.call('ZREM', 'due:' .. old_partition, lead)
    end
    -- the due index holds exactly the stored due times, so an unchanged one needs no command
    if due ~= '' then
      if moved or old_due ~= due then
        redis.call('ZADD', 'due:' .. partition, due, lead)
      end
    elseif moved or old_due ~= '' then
      redis.call('ZREM', 'due:' .. partition, lead)
    end
  end
end
return refused
"""
_BLOB_LENGTH = struct.Struct("<I")
# A batch write waiting for its turn goes ahead after this long whatever happens (a safety bound).
WRITE_TURN_TIMEOUT_SECONDS = 5.0


class WriteTurn:
    """When a batch write may be sent (LeadStore.save_batch): `allow` from the event loop; the writing
    thread waits for it."""

    def __init__(self) -> None:
        self._go = threading.Event()

    def allow(self) -> None:
        self._go.set()

    @property
    def allowed(self) -> bool:
        return self._go.is_set()

    def wait(self) -> None:
        self._go.wait(WRITE_TURN_TIMEOUT_SECONDS)


class LeadStore:
    """Lead records, segment sets and due index in Redis, encoded by `codec` (its spec's record layout).

    The codec's layout is registered in Redis (`record-layout:<fingerprint>`) before the first write, so a
    process with another feature spec can read these records: meeting a layout it does not know, a load
    fetches it from Redis once and decodes with it.
    """

    def __init__(
        self,
        redis: Redis,
        writer: sync_redis.Redis,
        *,
        codec: RecordCodec | None = None,
        history_length: int = 50,
    ) -> None:
        self.redis = redis
        # Batch writes go through a blocking client in a thread: a thread gets the GIL back from the
        # CPU-bound event loop within the switch interval, so a write can go out in the middle of the
        # next batch's fold and score (see `save_batch`); an awaited write would wait for their end.
        self.writer = writer
        # a codec of its own: the layouts it learns from Redis are this store's business
        self.codec = codec or RecordCodec(default_codec().layout)
        self.history_length = history_length
        self._write_script = writer.register_script(_WRITE_BATCH)
        self._layout_registered = False
        self._pending_reads: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self._read_tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        spec: FeatureSpec | None = None,
        timeout_seconds: float = 2.0,
        history_length: int = 50,
    ) -> LeadStore:
        """A store on `url` whose records use the layout of `spec` (the shipped config's when None)."""
        options: dict[str, Any] = {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            "health_check_interval": 30,
        }
        client = Redis.from_url(url, **options)
        writer = sync_redis.Redis.from_url(url, **options)
        codec = None if spec is None else RecordCodec.for_spec(spec)
        return cls(client, writer, codec=codec, history_length=history_length)

    async def register_layout(self) -> None:
        """Record this store's layout in Redis (kept if already there); refuses a different layout stored
        under the same fingerprint, which would make records undecodable elsewhere."""
        layout = self.codec.layout
        key = layout_key(layout.fingerprint)
        names = layout.to_json()
        if not await self.redis.set(key, names, nx=True):
            stored = await self.redis.get(key)
            if stored is not None and _bytes(stored) != names:
                raise RuntimeError(
                    f"{key} in Redis holds other names than this process's record layout (a fingerprint "
                    "collision): change a feature name in the config so the layout's fingerprint changes"
                )
        self._layout_registered = True

    async def _learn_layout(self, unknown: UnknownRecordLayout) -> None:
        """Fetch a layout met in a stored value from Redis and give it to the codec."""
        key = layout_key(unknown.fingerprint)
        raw = await self.redis.get(key)
        if raw is None:
            raise UnknownRecordLayout(
                unknown.lead_id, unknown.fingerprint, f"Redis has no {key}: the writer never registered its layout"
            )
        try:
            layout = RecordLayout.from_json(_bytes(raw))
        except ValueError as exc:
            raise RecordDecodeError(f"lead {unknown.lead_id}: {key} in Redis is not a record layout ({exc})") from None
        if layout.fingerprint != unknown.fingerprint:
            raise RecordDecodeError(f"lead {unknown.lead_id}: {key} in Redis holds names of another fingerprint")
        self.codec.add_layout(layout)

    async def _decode_with_layout_from_redis(self, lead_id: str, raw: bytes | str) -> LeadRecord:
        try:
            return self.codec.decode(lead_id, raw)
        except UnknownRecordLayout as unknown:
            await self._learn_layout(unknown)
            return self.codec.decode(lead_id, raw)

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
        self.writer.close()

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
        if raw is None:
            return None
        try:
            return self.codec.decode(lead_id, raw)
        except UnknownRecordLayout:  # written by a process with another feature spec
            return await self._decode_with_layout_from_redis(lead_id, raw)

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
        decode = self.codec.decode
        records: dict[str, LeadRecord] = {}
        for lead_id, raw in zip(lead_ids, values, strict=True):
            if raw is not None:
                try:
                    records[lead_id] = decode(lead_id, raw)
                except UnknownRecordLayout:  # written by a process with another feature spec
                    records[lead_id] = await self._decode_with_layout_from_redis(lead_id, raw)
        return records

    async def save_batch(
        self, records: Sequence[LeadRecord], *, sweep: bool = False, turn: WriteTurn | None = None
    ) -> list[str]:
        """Write records, their segment memberships and due times in one round trip; returns refused leads.

        Each record carries its offset fence in the same value, so state and fence are written by one
        SET. An event write whose offset is not newer than the stored one (same partition) is refused:
        it comes from a consumer that lost the partition in a rebalance (a zombie) or repeats a write
        already made, and the newer state stays. A sweep write is refused if an event write got there
        first since the sweeper loaded the lead. The store's record layout is registered before its first
        write, so no stored value names a layout that Redis does not have.

        With `turn`, the encoded write is sent once `turn` is set: the consumer sets it after loading the
        next batch, so that load is not queued in Redis behind this batch's script (~20 µs a lead).
        """
        if not records:
            return []
        if not self._layout_registered:
            await self.register_layout()
        encode, length = self.codec.encode, _BLOB_LENGTH.pack
        blob: list[bytes] = []
        for record in records:
            value = encode(record)
            history = record.history_entry or b""
            blob += (length(len(value)), value, length(len(history)), history)
        layout = self.codec.layout
        args = [
            "sweep" if sweep else "event",
            self.history_length,
            b"".join(blob),
            layout_key(layout.fingerprint),
            layout.to_json(),
        ]
        keys = [lead_key(r.lead_id) for r in records]
        refused = await asyncio.to_thread(self._write_when_its_turn, keys, args, turn)
        return [records[int(i) - 1].lead_id for i in refused]

    def _write_when_its_turn(self, keys: list[str], args: list[str | int | bytes], turn: WriteTurn | None) -> list[int]:
        if turn is not None:
            turn.wait()
        return cast(list[int], self._write_script(keys=keys, args=args))

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

    async def activate_if_none(self, version: str) -> bool:
        """Make `version` active unless one already is (processes starting together agree on one)."""
        return bool(await self.redis.set(ACTIVE_MODEL_KEY, version, nx=True))


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
