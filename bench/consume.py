"""Consumer-side measurements over a pre-produced backlog: raw consume, + parse, the full pipeline, one at a time.

Every rate is timed from the moment the first batch is in hand (so a consumer group's ~5 s join on the
local broker is not counted) to the end of the last batch's work, and divided into all events consumed.
"""

from __future__ import annotations

import asyncio
import cProfile
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from app.cli.runtime import build_pipeline, pipeline_scorer
from app.domain.batch import SourcedEvent
from app.domain.lead import LeadRecord
from app.pipeline import BatchOutcome, ScoringPipeline
from app.settings import Settings
from app.storage.keys import LEAD_KEY_PREFIX
from app.storage.leads import LeadStore, open_store
from consumers.messages import Rejection, parse_message
from consumers.producer import SegmentChangePublisher, change_producer
from consumers.topics import ensure_topics
from consumers.worker import Batch, ConsumerWorker

FETCH_TIMEOUT_MS = 50
STAGE_HISTOGRAM = "leadscore_batch_stage_seconds"


@dataclass(frozen=True)
class Backlog:
    """A topic holding `events` pre-produced events, and where the service should keep its state."""

    bootstrap_servers: str
    topic: str
    partitions: int
    events: int
    redis_url: str


@dataclass
class PipelineRun:
    events: int
    seconds: float
    batches: int
    complete: bool  # False: stopped at the time cap before the whole backlog was handled
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # Events and seconds of the batches up to the first `head_events`: the same events the one-at-a-time
    # baseline handles, from the same empty store, for a like-for-like speed-up.
    head_events: int = 0
    head_seconds: float = 0.0
    cpu_seconds: float = 0.0  # the process's CPU time over `seconds`: below `seconds`, it also waited
    leads_written: int = 0  # lead records the batches wrote (a lead with several events in a batch: once)

    @property
    def cpu_share(self) -> float:
        return self.cpu_seconds / self.seconds if self.seconds else float("nan")

    @property
    def head_rate(self) -> float:
        return self.head_events / self.head_seconds if self.head_seconds else float("nan")

    @property
    def rate(self) -> float:
        return self.events / self.seconds


async def service_pipeline(settings: Settings, store: LeadStore) -> ScoringPipeline:
    """The pipeline wired as `leadscore consume` wires it (app.runtime): same model choice, same options."""
    return build_pipeline(settings, store, await pipeline_scorer(settings, store))


def _consumer(backlog: Backlog, max_message_bytes: int) -> AIOKafkaConsumer:
    # Same fetch settings as the service's worker; no group, so no join wait and nothing committed.
    return AIOKafkaConsumer(
        bootstrap_servers=backlog.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max(1_048_576, max_message_bytes * 2),
    )


async def _consume_backlog(
    backlog: Backlog,
    limit: int,
    on_batch: Callable[[Batch], Awaitable[None]] | None,
    *,
    settings: Settings,
) -> tuple[int, float]:
    """Fetch from the start of every partition until `limit` events; returns (events, seconds).

    Loops until the events are there: callers bound it with asyncio.timeout / wait_for.
    """
    consumer = _consumer(backlog, settings.max_message_bytes)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(backlog.topic, p) for p in range(backlog.partitions)])
        await consumer.seek_to_beginning()
        consumed = 0
        started: float | None = None
        while consumed < limit:
            batch = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=settings.batch_max_records)
            if not batch:
                continue
            if started is None:
                started = time.perf_counter()
            if on_batch is not None:
                await on_batch(batch)
            consumed += sum(len(messages) for messages in batch.values())
        assert started is not None
        return consumed, time.perf_counter() - started
    finally:
        await consumer.stop()


async def raw_consume(backlog: Backlog, settings: Settings) -> float:
    """aiokafka getmany with no processing: the ceiling every other consumer figure is compared with."""
    events, seconds = await _consume_backlog(backlog, backlog.events, None, settings=settings)
    return events / seconds


async def parse_consume(backlog: Backlog, settings: Settings) -> float:
    """getmany + parse_message (JSON + schema validation) for every message, as the worker does."""
    max_bytes = settings.max_message_bytes
    rejected = 0

    async def parse(batch: Batch) -> None:
        nonlocal rejected
        for messages in batch.values():
            for message in messages:
                if isinstance(parse_message(message.key, message.value, max_bytes), Rejection):
                    rejected += 1

    events, seconds = await _consume_backlog(backlog, backlog.events, parse, settings=settings)
    if rejected:
        raise RuntimeError(f"{rejected} benchmark events were rejected by parse_message: the workload is wrong")
    return events / seconds


class TimedWorker(ConsumerWorker):
    """The service's ConsumerWorker, stopped once `expected` events are handled, with the time it took.

    It also stops after `max_seconds` of handling, so a slow pipeline still gives a steady-state rate
    within the benchmark's time budget. A profiler, if given, runs over the same span as the clock: first
    batch to last commit, not the group join.
    """

    def __init__(
        self,
        settings: Settings,
        pipeline: ScoringPipeline,
        expected: int,
        max_seconds: float,
        profiler: cProfile.Profile | None = None,
        head: int = 0,
    ) -> None:
        super().__init__(settings, pipeline)
        self.expected = expected
        self.max_seconds = max_seconds
        self.profiler = profiler
        self.head = head
        self.head_events = 0
        self.head_seconds = 0.0
        self.handled = 0
        self.batches = 0
        self.started: float | None = None
        self.finished = 0.0
        self.cpu_started = self.cpu_finished = 0.0
        self.leads_written = 0

    def _saved(self, outcome: BatchOutcome, offsets: dict[TopicPartition, int]) -> None:
        super()._saved(outcome, offsets)
        self.leads_written += len(outcome.records)

    async def handle(self, batch: Batch, stop: asyncio.Event) -> None:
        if self.started is None:
            if self.profiler is not None:
                self.profiler.enable()
            self.started = time.perf_counter()
            self.cpu_started = time.process_time()
        await super().handle(batch, stop)
        self.handled += sum(len(messages) for messages in batch.values())
        self.batches += 1
        at_head = self.head and not self.head_events and self.handled >= self.head
        done = self.handled >= self.expected or time.perf_counter() - self.started >= self.max_seconds
        if at_head or done:
            await self.drain()  # the clock stops when the last batch counted is written and committed
        self.finished = time.perf_counter()
        self.cpu_finished = time.process_time()
        if at_head:
            self.head_events, self.head_seconds = self.handled, self.finished - self.started
        if done:
            if self.profiler is not None:
                self.profiler.disable()
            stop.set()


def _stage_totals() -> dict[str, float]:
    """Seconds spent so far per batch stage (whatever stages the worker reports), from its own histogram."""
    totals: dict[str, float] = {}
    for family in REGISTRY.collect():
        if family.name != STAGE_HISTOGRAM:
            continue
        for sample in family.samples:
            if sample.name == f"{STAGE_HISTOGRAM}_sum":
                totals[sample.labels["stage"]] = sample.value
    return totals


async def full_pipeline(
    backlog: Backlog,
    settings: Settings,
    *,
    max_seconds: float,
    profiler: cProfile.Profile | None = None,
    head: int = 0,
) -> PipelineRun:
    """The real ConsumerWorker (parse, load, fold, score, segment, write, commit) over the backlog.

    Runs in a fresh consumer group against an empty Redis database, so every run does the same work;
    stops when the backlog is handled or after `max_seconds` of handling, whichever comes first.
    """
    store = open_store(settings)
    try:
        await store.redis.flushdb()
        pipeline = await service_pipeline(settings, store)
        worker = TimedWorker(settings, pipeline, backlog.events, max_seconds, profiler, head)
        stop = asyncio.Event()
        before = _stage_totals()
        try:
            await worker.run(stop)
        finally:
            if profiler is not None:
                profiler.disable()
        after = _stage_totals()
    finally:
        await store.close()
    if worker.started is None or worker.handled == 0:
        raise RuntimeError(f"the worker handled no event of {backlog.events}")
    stages = {stage: seconds - before.get(stage, 0.0) for stage, seconds in after.items()}
    seconds = worker.finished - worker.started
    complete = worker.handled >= backlog.events
    return PipelineRun(
        worker.handled,
        seconds,
        worker.batches,
        complete,
        stages,
        worker.head_events,
        worker.head_seconds,
        worker.cpu_finished - worker.cpu_started,
        worker.leads_written,
    )


async def one_at_a_time(backlog: Backlog, settings: Settings) -> float:
    """The naive consumer: per event, await the lead's read, fold, predict one row, await the write.

    It is the service's own pipeline given batches of one event (one read round trip, a single-row
    predict, segment changes published and acknowledged, one write round trip per event), so it stays
    the same code as the batched path. It handles the first `backlog.events` events of the backlog from
    an empty store: the same work as the start of a full pipeline run.
    """
    store = open_store(settings)
    max_bytes = settings.max_message_bytes
    await ensure_topics(settings.kafka_bootstrap_servers, [settings.segment_changes_topic], backlog.partitions, 1)
    # Segment changes go out as the worker sends them (its producer settings, the same publisher).
    producer = change_producer(settings)
    await producer.start()
    try:
        await store.redis.flushdb()
        pipeline = await service_pipeline(settings, store)
        pipeline.publish = SegmentChangePublisher(producer, settings.segment_changes_topic)

        async def one_by_one(batch: Batch) -> None:
            for tp, messages in batch.items():
                for message in messages:
                    event = parse_message(message.key, message.value, max_bytes)
                    if not isinstance(event, Rejection):
                        await pipeline.save(await pipeline.prepare([SourcedEvent(event, tp.partition, message.offset)]))

        events, seconds = await _consume_backlog(backlog, backlog.events, one_by_one, settings=settings)
    finally:
        await producer.stop()
        await store.close()
    return events / seconds


def _lead_id_of(key: bytes) -> str:
    return key.decode()[len(LEAD_KEY_PREFIX) + 1 : -1]  # lead:{<id>}


async def stored_lead_ids(redis_url: str) -> list[str]:
    """Every lead with a stored record (what GET /leads/{id} can find)."""
    redis = Redis.from_url(redis_url)
    try:
        return [_lead_id_of(key) async for key in redis.scan_iter(match=f"{LEAD_KEY_PREFIX}{{*}}", count=5_000)]
    finally:
        await redis.aclose()


async def stored_counts(redis_url: str, lead_ids: Sequence[str], *, cluster: bool = False) -> dict[str, dict[str, int]]:
    """event_counts as stored for `lead_ids` (the check that the pipeline really applied every event)."""
    store = LeadStore.from_url(redis_url, cluster=cluster)
    try:
        records: dict[str, LeadRecord] = await store.load_many(lead_ids)
    finally:
        await store.close()
    return {lead: dict(record.state.counts) for lead, record in records.items()}


async def listing_page_ms(redis_url: str, *, cluster: bool = False, pages: int = 200, limit: int = 50) -> float:
    """Median milliseconds for a page of the largest `tier` segment through LeadStore.segment_page, walking it
    with the cursor (and starting again at its end): on a cluster, a page merges the groups' sorted sets."""
    store = LeadStore.from_url(redis_url, cluster=cluster)
    try:
        tiers = [("tier", name) for name in ("customer", "hot", "warm", "dormant", "cold")]
        sizes = await store.segment_sizes(tiers)
        _, segment = max(sizes, key=lambda name: sizes[name])
        times: list[float] = []
        cursor: str | None = None
        for _ in range(pages):
            started = time.perf_counter()
            page = await store.segment_page("tier", segment, limit, cursor)
            times.append(time.perf_counter() - started)
            cursor = page.next_cursor
        return statistics.median(times) * 1000
    finally:
        await store.close()
