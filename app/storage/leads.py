"""LeadStore: the lead records in Redis, read and written a batch at a time (keys: app.storage.keys).

A batch is one MGET to load and one script call to write: records, segment sets and due index.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import struct
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, cast

import orjson
import redis as sync_redis
import redis.cluster as sync_cluster
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError

from app.domain.lead import LeadRecord
from app.domain.segments import SegmentSets
from app.eventloop import PerTurn
from app.settings import ServiceConfig, Settings
from app.storage.codec import RecordCodec, RecordDecodeError, RecordLayout, UnknownRecordLayout, default_codec
from app.storage.keys import KeySpace
from app.storage.registry import ModelStore
from models.spec import FeatureSpec

# Paging walks ties at the cursor's score; this caps the extra rows one request may read.
_MAX_TIE_SCAN = 10_000


class InvalidCursor(ValueError):
    """A pagination cursor that this API did not hand out."""


@dataclass(frozen=True)
class SegmentPage:
    leads: list[tuple[str, float]]
    next_cursor: str | None


# The scripts: their arguments and rules are documented at their tops.
_WRITE_BATCH = (Path(__file__).parent / "write_batch.lua").read_text()
_ERASE = (Path(__file__).parent / "erase.lua").read_text()
# An erasure re-reads a record that changed under it; a lead written this often in a row is being fed events.
_ERASE_ATTEMPTS = 20
# The activity feed (the page's events/s and latest changes): small, and written once per batch, not per lead.
ACTIVITY_SECONDS_KEPT = 120
RECENT_CHANGES_KEPT = 100
_BLOB_LENGTH = struct.Struct("<I")


class Fence(StrEnum):
    """Which writes of a lead the batch write script accepts."""

    NEWER_OFFSET = "event"  # events were applied: the offset must be newer than stored (same partition)
    SAME_OFFSET = "sweep"  # a rescore without a new event: the stored offset must be the one it loaded


@dataclass(frozen=True)
class ScriptCall:
    """One call of the write script: the records of one group of leads (all of them on one Redis)."""

    lead_ids: list[str]
    keys: list[str]
    args: list[str | int | bytes]


@dataclass(frozen=True)
class Activity:
    """What a batch adds to the activity feed: its events, counted in the second it was written, and its latest
    segment changes (as published). For display: a batch redone after a crash counts again."""

    events: int
    changes: list[bytes]


@dataclass(frozen=True)
class BatchWrite:
    """A batch write, encoded (in the event loop) and ready to send (from any thread)."""

    calls: list[ScriptCall]
    activity: Activity | None = None

    @property
    def lead_ids(self) -> list[str]:
        return [lead for call in self.calls for lead in call.lead_ids]


class ErasedState(StrEnum):
    ERASED = "erased"  # the record, its history, segment memberships and due entry are gone
    ABSENT = "absent"  # there was no record (a history without one is gone too)
    NEWER = "newer"  # left alone: the record holds events after the erasure (see `LeadStore.erase`)


@dataclass(frozen=True)
class Erasure:
    state: ErasedState
    segments: dict[str, str]  # the segment of each set the erased record was in


class EraseConflict(RuntimeError):
    """The lead's record changed under every attempt to erase it."""


AsyncClient = Redis | RedisCluster
SyncClient = sync_redis.Redis | sync_cluster.RedisCluster


class LeadStore:
    """Lead records, segment sets and due index in Redis, encoded by `codec` (its spec's record layout).

    The codec's layout is registered in Redis (`record-layout:<fingerprint>`) before the first write, so a
    process with another feature spec can read these records: meeting a layout it does not know, a load
    fetches it from Redis once and decodes with it.
    """

    def __init__(
        self,
        redis: AsyncClient,
        writer: SyncClient,
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
        # Key names follow the client: a cluster client's keys carry their group's hash tag.
        self.keys = KeySpace(clustered=isinstance(redis, RedisCluster))
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
        self._erase_script = writer.register_script(_ERASE)
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
        cluster: bool = False,
    ) -> LeadStore:
        """A store on `url` whose records use the layout of `spec` and whose leads move between the segments of
        `segments` (the shipped config's when None); with `cluster`, `url` names any node of a Redis Cluster."""
        options: dict[str, Any] = {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            "health_check_interval": 30,
        }
        client: AsyncClient
        writer: SyncClient
        if cluster:
            options.pop("health_check_interval")  # per node connection option the cluster client does not take
            client = RedisCluster.from_url(url, **options)
            writer = sync_cluster.RedisCluster.from_url(url, **options)
        else:
            client = Redis.from_url(url, **options)
            writer = sync_redis.Redis.from_url(url, **options)
        codec = None if spec is None else RecordCodec.for_spec(spec)
        names = None if segments is None else segments.names
        return cls(client, writer, codec=codec, history_length=history_length, segment_names=names)

    async def register_layout(self) -> None:
        """Record this store's layout in Redis (kept if already there); refuses a different layout stored
        under the same fingerprint, which would make records undecodable elsewhere."""
        layout = self.codec.layout
        key = self.keys.layout(layout.fingerprint, 0)
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
        # every write script call sets the layout under its group's tag: the lead's group has it
        key = self.keys.layout(unknown.fingerprint, self.keys.group(unknown.lead_id))
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
        return [_bytes(entry) for entry in await self.redis.lrange(self.keys.history(lead_id), 0, limit - 1)]

    async def lead_ids(self, count: int = 1000) -> AsyncIterator[list[str]]:
        """Every stored lead id, a page of about `count` at a time, from SCAN (no blocking KEYS; on a cluster,
        every master's)."""
        page: list[str] = []
        async for key in self.redis.scan_iter(match=self.keys.lead_pattern(), count=count):
            page.append(self.keys.lead_id(_text(key)))
            if len(page) >= count:
                yield page
                page = []
        if page:
            yield page

    @property
    def models(self) -> ModelStore:
        """The model registry, in the same Redis."""
        return ModelStore(self.redis, self.keys)

    async def close(self) -> None:
        await self.redis.aclose()
        if isinstance(self.writer, sync_cluster.RedisCluster):
            self.writer.disconnect_connection_pools()  # type: ignore[no-untyped-call]  # nodes' pools: close() leaves them
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
        return [None if raw is None else _bytes(raw) for raw in await self._mget(lead_ids)]

    async def _mget(self, lead_ids: Sequence[str]) -> list[bytes | str | None]:
        """The leads' stored values: one MGET, or on a cluster one per group (sent together, node by node)."""
        keys = [self.keys.lead(lead_id) for lead_id in lead_ids]
        if isinstance(self.redis, RedisCluster):
            return cast(list[bytes | str | None], await self.redis.mget_nonatomic(keys))
        return await self.redis.mget(keys)

    async def load_many(self, lead_ids: Sequence[str]) -> dict[str, LeadRecord]:
        """Stored records of the leads that have one (one MGET)."""
        if not lead_ids:
            return {}
        values = await self._mget(lead_ids)
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

    async def save_batch(
        self, records: Sequence[LeadRecord], fence: Fence = Fence.NEWER_OFFSET, activity: Activity | None = None
    ) -> list[str]:
        """Write records, their segment memberships, due times and history in one round trip; returns the leads
        the fence refused (see `batch_write`). The round trip goes from a thread (see `send`)."""
        write = await self.batch_write(records, fence, activity)
        return await asyncio.to_thread(self.send, write)

    async def batch_write(
        self, records: Sequence[LeadRecord], fence: Fence = Fence.NEWER_OFFSET, activity: Activity | None = None
    ) -> BatchWrite:
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
        if len({record.lead_id for record in records}) != len(records):
            # the write script reads every record first and writes after: a lead twice would be fenced once
            raise ValueError("a batch write holds a lead twice: give each lead's latest record once")
        by_group: dict[int, list[LeadRecord]] = {}
        for record in records:
            by_group.setdefault(self.keys.group(record.lead_id), []).append(record)
            # Segment sets and due indexes this store's leads may be in (also where a lead may have been).
            self.segment_names.update(record.segments.items())
            self.partitions.add(record.partition)
        segments = sorted(self.segment_names)
        due_partitions = sorted(self.partitions)
        return BatchWrite(
            [self._script_call(group, batch, segments, due_partitions, fence) for group, batch in by_group.items()],
            activity,
        )

    def _script_call(
        self,
        group: int,
        records: list[LeadRecord],
        segments: list[tuple[str, str]],
        due_partitions: list[int],
        fence: Fence,
    ) -> ScriptCall:
        encode, length = self.codec.encode, _BLOB_LENGTH.pack
        blob: list[bytes] = []
        for record in records:
            lead = record.lead_id.encode()
            value = encode(record)
            history = record.history_entry or b""
            blob += (length(len(lead)), lead, length(len(value)), value, length(len(history)), history)
        layout, keys = self.codec.layout, self.keys
        names = [keys.lead(r.lead_id) for r in records]
        names += [keys.history(r.lead_id) for r in records]
        names += [keys.segment(segment_set, segment, group) for segment_set, segment in segments]
        names += [keys.due(partition, group) for partition in due_partitions]
        names.append(keys.layout(layout.fingerprint, group))
        args: list[str | int | bytes] = [
            fence.value,
            self.history_length,
            b"".join(blob),
            layout.to_json(),
            len(records),
            ",".join(f"{segment_set}={segment}" for segment_set, segment in segments),
            ",".join(str(partition) for partition in due_partitions),
        ]
        return ScriptCall([r.lead_id for r in records], names, args)

    def send(self, write: BatchWrite) -> list[str]:
        """Send an encoded batch write (blocking: call it from a thread); returns the leads the fence refused.

        A blocking client in a thread gets the GIL back from a CPU-bound event loop within the switch interval,
        so a write can go out in the middle of the next batch's fold and score; an awaited write would wait for
        their end. The script calls (one per group on a cluster) and the batch's activity go out in one pipeline:
        one round trip, per node on a cluster."""
        if not write.calls and write.activity is None:
            return []
        outcomes = self._pipelined(write.calls, write.activity)
        if any(isinstance(outcome, NoScriptError) for outcome in outcomes):
            # A node that never saw the script (new, restarted, failed over): load it, redo only those calls,
            # which did not run (redoing a call that ran would meet its own fence).
            self.writer.script_load(self._write_script.script)
            unsent = [isinstance(outcome, NoScriptError) for outcome in outcomes]
            redo = [call for call, missed in zip(write.calls, unsent, strict=True) if missed]
            retried = iter(self._pipelined(redo))
            outcomes = [next(retried) if missed else o for o, missed in zip(outcomes, unsent, strict=True)]
        refused: list[str] = []
        for call, outcome in zip(write.calls, outcomes, strict=True):
            if isinstance(outcome, Exception):
                raise outcome
            refused += _refused(call, outcome)
        return refused

    def _pipelined(self, calls: Sequence[ScriptCall], activity: Activity | None = None) -> list[Any]:
        """The calls' outcomes (an activity's commands go in the same round trip; their outcomes are dropped:
        a feed for display, whose failure must not fail a batch)."""
        pipe = self.writer.pipeline(transaction=False)
        for call in calls:
            # the command by name: the cluster pipeline offers no evalsha method but routes EVALSHA by its keys
            pipe.execute_command("EVALSHA", self._write_script.sha, len(call.keys), *call.keys, *call.args)
        if activity is not None:
            events = self.keys.activity_events(int(time.time()))
            pipe.incrby(events, activity.events)
            pipe.expire(events, ACTIVITY_SECONDS_KEPT)
            if activity.changes:
                pipe.lpush(self.keys.activity_changes, *activity.changes)
                pipe.ltrim(self.keys.activity_changes, 0, RECENT_CHANGES_KEPT - 1)
        return cast(list[Any], pipe.execute(raise_on_error=False))[: len(calls)]

    async def erase(self, lead_id: str, after: tuple[int, int] | None = None) -> Erasure:
        """Remove a lead: its record, score history, segment memberships and due entry, in one script call.

        `after` is the (partition, offset) of an erasure request on the events topic: a record holding an event of
        that partition after it is a new lead (events that followed the erasure), and is left alone (NEWER).
        Without it (the API) the lead is erased whatever it holds. The record is read first, to know which
        segment sets and due index hold the lead; the script erases only if the record is still what was read.
        A record that cannot be decoded is erased too, from every segment set this store knows.
        """
        group = self.keys.group(lead_id)
        for _ in range(_ERASE_ATTEMPTS):
            raw = await self.redis.get(self.keys.lead(lead_id))
            record: LeadRecord | None = None
            segments = set(self.segment_names)
            partitions = set(self.partitions)
            if raw is not None:
                try:
                    record = await self._decode_with_layout_from_redis(lead_id, raw)
                except (RecordDecodeError, UnknownRecordLayout):
                    pass  # unreadable: erased all the same, from everywhere it may be
                else:
                    if after is not None and record.partition == after[0] and record.offset > after[1]:
                        return Erasure(ErasedState.NEWER, {})
                    segments, partitions = set(record.segments.items()), {record.partition}
            keys = [self.keys.lead(lead_id), self.keys.history(lead_id)]
            keys += [self.keys.segment(segment_set, segment, group) for segment_set, segment in sorted(segments)]
            keys += [self.keys.due(partition, group) for partition in sorted(partitions) if partition >= 0]
            args: list[str | bytes] = [lead_id, b"" if raw is None else _bytes(raw)]
            if await asyncio.to_thread(self._erase_script, keys=keys, args=args):
                await self._forget_recent_changes(lead_id)
                state = ErasedState.ABSENT if raw is None else ErasedState.ERASED
                return Erasure(state, dict(record.segments) if record is not None else {})
        raise EraseConflict(f"lead {lead_id} changed {_ERASE_ATTEMPTS} times while it was being erased: try again")

    async def activity(self, seconds: int) -> tuple[list[tuple[int, int]], list[bytes]]:
        """Events written in each of the last `seconds` seconds, the current one last (still counting), and the
        latest segment changes, newest first."""
        now = int(time.time())
        window = range(now - seconds + 1, now + 1)
        counts = await self.redis.mget([self.keys.activity_events(second) for second in window])
        changes = await self.redis.lrange(self.keys.activity_changes, 0, RECENT_CHANGES_KEPT - 1)
        per_second = [(second, int(count or 0)) for second, count in zip(window, counts, strict=True)]
        return per_second, [_bytes(change) for change in changes]

    async def _forget_recent_changes(self, lead_id: str) -> None:
        """Take an erased lead's entries out of the activity feed."""
        key = self.keys.activity_changes
        for change in await self.redis.lrange(key, 0, -1):
            with contextlib.suppress(orjson.JSONDecodeError):
                if orjson.loads(change).get("lead_id") == lead_id:
                    await self.redis.lrem(key, 0, _text(change))

    async def score_histogram(self, segment_set: str, segments: Sequence[str], edges: Sequence[float]) -> list[int]:
        """How many of the set's leads score in each bin [edges[i], edges[i + 1]) (the last bin includes its upper
        edge), counted in the set's sorted sets: every lead is in one segment of a set."""
        bins = len(edges) - 1
        pipe = self.redis.pipeline(transaction=False)
        for segment in segments:
            for group in self.keys.groups:
                key = self.keys.segment(segment_set, segment, group)
                for i in range(bins):
                    upper = edges[i + 1] if i == bins - 1 else f"({edges[i + 1]!r}"
                    pipe.zcount(key, edges[i], upper)
        replies = [int(count) for count in await pipe.execute()]
        return [sum(replies[i::bins]) for i in range(bins)]

    async def due_leads(self, partition: int, now_ms: int, limit: int) -> dict[str, int]:
        """Leads of a partition whose due time has come, earliest first, with their due times."""
        pipe = self.redis.pipeline(transaction=False)
        for group in self.keys.groups:
            pipe.zrange(
                self.keys.due(partition, group), "-inf", now_ms, byscore=True, offset=0, num=limit, withscores=True
            )
        rows = [row for rows in await pipe.execute() for row in cast(list[tuple[bytes, float]], rows)]
        return {member.decode(): int(score) for member, score in heapq.nsmallest(limit, rows, key=_score)}

    async def forget_due(self, partition: int, lead_ids: Sequence[str]) -> None:
        by_group: dict[int, list[str]] = {}
        for lead_id in lead_ids:
            by_group.setdefault(self.keys.group(lead_id), []).append(lead_id)
        if by_group:
            pipe = self.redis.pipeline(transaction=False)
            for group, members in by_group.items():
                pipe.zrem(self.keys.due(partition, group), *members)
            await pipe.execute()

    async def due_count(self, partition: int, now_ms: int) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for group in self.keys.groups:
            pipe.zcount(self.keys.due(partition, group), "-inf", now_ms)
        return sum(int(count) for count in await pipe.execute())

    async def segment_sizes(self, segments: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Current size of each (segment set, segment)."""
        names = list(segments)
        groups = self.keys.groups
        pipe = self.redis.pipeline(transaction=False)
        for segment_set, segment in names:
            for group in groups:
                pipe.zcard(self.keys.segment(segment_set, segment, group))
        sizes = [int(size) for size in await pipe.execute()]
        return {name: sum(sizes[i * len(groups) : (i + 1) * len(groups)]) for i, name in enumerate(names)}

    async def segment_page(
        self, segment_set: str, segment: str, limit: int, cursor: str | None, min_score: float | None = None
    ) -> SegmentPage:
        """Leads of a segment by score, highest first; the cursor resumes after the last lead returned.

        The cursor is the last (score, lead) returned, so a page is stable under concurrent writes: a
        lead is never returned twice, and one whose score moved across the cursor is simply met or not.
        On a cluster each group's sorted set gives its first limit + 1 leads after the cursor and the page is
        their merge, in the order one sorted set would give.
        """
        floor: str | float = "-inf" if min_score is None else min_score
        after = None if cursor is None else decode_cursor(cursor)
        groups = self.keys.groups
        pipe = self.redis.pipeline(transaction=False)
        for group in groups:
            key = self.keys.segment(segment_set, segment, group)
            if after is None:
                pipe.zrange(key, "+inf", floor, desc=True, byscore=True, offset=0, num=limit + 1, withscores=True)
                continue
            # Equal scores come in reverse lexicographic order of lead id: resume within the tie, then below it.
            score = after[0]
            pipe.zrange(key, score, score, desc=True, byscore=True, offset=0, num=_MAX_TIE_SCAN, withscores=True)
            pipe.zrange(key, f"({score!r}", floor, desc=True, byscore=True, offset=0, num=limit + 1, withscores=True)
        replies = cast(list[list[tuple[bytes, float]]], await pipe.execute())
        if after is None:
            rows = [row for reply in replies for row in reply]
        else:
            after_score, after_lead = after
            ties = [] if min_score is not None and after_score < min_score else replies[0::2]
            rows = [(m, s) for reply in ties for m, s in reply if m.decode() < after_lead]
            rows += [row for reply in replies[1::2] for row in reply]
        if len(groups) > 1:
            rows = heapq.nlargest(limit + 1, rows, key=_score_then_member)
        return _page(rows, limit)


def _score(row: tuple[bytes, float]) -> float:
    return row[1]


def _score_then_member(row: tuple[bytes, float]) -> tuple[float, bytes]:
    return row[1], row[0]


def _refused(call: ScriptCall, positions: Any) -> list[str]:
    return [call.lead_ids[int(i) - 1] for i in cast(list[int], positions)]


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
        cluster=settings.redis_cluster,
    )


@cache
def _shipped_segment_names() -> frozenset[tuple[str, str]]:
    return frozenset(ServiceConfig.load(None).segments.names)
