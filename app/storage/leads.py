"""LeadStore: the lead records in Redis, read and written a batch at a time (keys: app.storage.keys).

A batch is one MGET to load and one script call to write: records, segment sets and due index.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, cast

import orjson
import redis as sync_redis
from redis.asyncio import Redis

from app.domain.lead import LeadRecord
from app.domain.segments import SegmentSets
from app.eventloop import PerTurn
from app.settings import ServiceConfig, Settings
from app.storage.codec import RecordCodec, RecordDecodeError, RecordLayout, UnknownRecordLayout, default_codec
from app.storage.keys import LEAD_KEY_PREFIX, due_key, history_key, layout_key, lead_key, segment_key
from models.spec import FeatureSpec

# Paging walks ties at the cursor's score; this caps the extra rows one request may read.
_MAX_TIE_SCAN = 10_000


class InvalidCursor(ValueError):
    """A pagination cursor that this API did not hand out."""


@dataclass(frozen=True)
class SegmentPage:
    leads: list[tuple[str, float]]
    next_cursor: str | None


# The batch write script: its arguments and rules are documented at its top.
_WRITE_BATCH = (Path(__file__).parent / "write_batch.lua").read_text()
_BLOB_LENGTH = struct.Struct("<I")


class Fence(StrEnum):
    """Which writes of a lead the batch write script accepts."""

    NEWER_OFFSET = "event"  # events were applied: the offset must be newer than stored (same partition)
    SAME_OFFSET = "sweep"  # a rescore without a new event: the stored offset must be the one it loaded


@dataclass(frozen=True)
class BatchWrite:
    """A batch write, encoded (in the event loop) and ready to send (from any thread)."""

    lead_ids: list[str]
    keys: list[str]
    args: list[str | int | bytes]


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
        segment_names: Iterable[tuple[str, str]] | None = None,
    ) -> None:
        self.redis = redis
        # Batch writes go through a blocking client in a thread: a thread gets the GIL back from the
        # CPU-bound event loop within the switch interval, so a write can go out in the middle of the
        # next batch's fold and score (see `save_batch`); an awaited write would wait for their end.
        self.writer = writer
        # a codec of its own: the layouts it learns from Redis are this store's business
        self.codec = codec or RecordCodec(default_codec().layout)
        self.history_length = history_length
        # (set, segment) pairs whose sets the batch write may touch besides the batch's own: where a lead may
        # have been (the write script touches declared keys only).
        self.segment_names = set(segment_names if segment_names is not None else _shipped_segment_names())
        # Partitions whose due index a write may have to leave (a lead whose events moved to another partition).
        # Both grow with what loads and writes meet: bounded by the partitions and the segments there are.
        self.partitions: set[int] = set()
        self._write_script = writer.register_script(_WRITE_BATCH)
        self._layout_registered = False
        self._read = PerTurn(self._read_many)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        spec: FeatureSpec | None = None,
        segments: SegmentSets | None = None,
        timeout_seconds: float = 2.0,
        history_length: int = 50,
    ) -> LeadStore:
        """A store on `url` whose records use the layout of `spec` and whose leads move between the segments of
        `segments` (the shipped config's when None)."""
        options: dict[str, Any] = {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            "health_check_interval": 30,
        }
        client = Redis.from_url(url, **options)
        writer = sync_redis.Redis.from_url(url, **options)
        codec = None if spec is None else RecordCodec.for_spec(spec)
        names = None if segments is None else segments.names
        return cls(client, writer, codec=codec, history_length=history_length, segment_names=names)

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
        return [_bytes(entry) for entry in await self.redis.lrange(history_key(lead_id), 0, limit - 1)]

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
        raw = await self._read(lead_id)
        if raw is None:
            return None
        try:
            return self.codec.decode(lead_id, raw)
        except UnknownRecordLayout:  # written by a process with another feature spec
            return await self._decode_with_layout_from_redis(lead_id, raw)

    async def _read_many(self, lead_ids: list[str]) -> list[bytes | None]:
        values = await self.redis.mget([lead_key(lead_id) for lead_id in lead_ids])
        return [None if raw is None else _bytes(raw) for raw in values]

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
        # A later write of these leads may move them out of these partitions' due indexes and segment sets.
        self.partitions.update(record.partition for record in records.values())
        for record in records.values():
            self.segment_names.update(record.segments.items())
        return records

    async def save_batch(self, records: Sequence[LeadRecord], fence: Fence = Fence.NEWER_OFFSET) -> list[str]:
        """Write records, their segment memberships, due times and history in one round trip; returns the leads
        the fence refused (see `batch_write`). The round trip goes from a thread (see `send`)."""
        write = await self.batch_write(records, fence)
        return await asyncio.to_thread(self.send, write)

    async def batch_write(self, records: Sequence[LeadRecord], fence: Fence = Fence.NEWER_OFFSET) -> BatchWrite:
        """Encode a batch write: records, their segment memberships, due times and score history.

        Each record carries its offset fence in the same value, so state and fence are written by one SET. With
        NEWER_OFFSET, a write whose offset is not newer than the stored one (same partition) is refused: it comes
        from a consumer that lost the partition in a rebalance (a zombie) or repeats a write already made, and
        the newer state stays. With SAME_OFFSET (a rescore), a write is refused if an event write got there first
        since the lead was loaded. The store's record layout is registered before its first write, so no stored
        value names a layout that Redis does not have.
        """
        if not self._layout_registered and records:
            await self.register_layout()
        encode, length = self.codec.encode, _BLOB_LENGTH.pack
        blob: list[bytes] = []
        segment_names, partitions = self.segment_names, self.partitions
        for record in records:
            lead = record.lead_id.encode()
            value = encode(record)
            history = record.history_entry or b""
            blob += (length(len(lead)), lead, length(len(value)), value, length(len(history)), history)
            segment_names.update(record.segments.items())
            partitions.add(record.partition)
        segments = sorted(segment_names)
        due_partitions = sorted(partitions)
        layout = self.codec.layout
        keys = [lead_key(r.lead_id) for r in records]
        keys += [history_key(r.lead_id) for r in records]
        keys += [segment_key(segment_set, segment) for segment_set, segment in segments]
        keys += [due_key(partition) for partition in due_partitions]
        keys.append(layout_key(layout.fingerprint))
        args: list[str | int | bytes] = [
            fence.value,
            self.history_length,
            b"".join(blob),
            layout.to_json(),
            len(records),
            ",".join(f"{segment_set}={segment}" for segment_set, segment in segments),
            ",".join(str(partition) for partition in due_partitions),
        ]
        return BatchWrite([r.lead_id for r in records], keys, args)

    def send(self, write: BatchWrite) -> list[str]:
        """Send an encoded batch write (blocking: call it from a thread); returns the leads the fence refused.

        A blocking client in a thread gets the GIL back from a CPU-bound event loop within the switch interval,
        so a write can go out in the middle of the next batch's fold and score; an awaited write would wait for
        their end."""
        if not write.lead_ids:
            return []
        refused = cast(list[int], self._write_script(keys=write.keys, args=write.args))
        return [write.lead_ids[int(i) - 1] for i in refused]

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


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def open_store(settings: Settings) -> LeadStore:
    """The lead store, its records laid out by the configured feature spec."""
    return LeadStore.from_url(
        str(settings.redis_url),
        spec=settings.service_config.features,
        segments=settings.service_config.segments,
        timeout_seconds=settings.redis_timeout_seconds,
        history_length=settings.history_length,
    )


@cache
def _shipped_segment_names() -> frozenset[tuple[str, str]]:
    return frozenset(ServiceConfig.load(None).segments.names)
