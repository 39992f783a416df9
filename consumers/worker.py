"""The consumer worker: micro-batches from the events topic through the scoring pipeline.

It fetches up to `batch_max_records` messages (getmany), parses and validates them (rejects go to the
dead-letter topic with the reason and their origin), prepares the batch with the pipeline (load, fold, score)
and hands it to the saver, which publishes, writes and commits it in the background while the next batch is
fetched and prepared. The order of those steps, and the guarantees it gives (exactly-once effect on Redis,
segment changes at least once with stable ids), are listed in one place: consumers/saver.py.

Beside the batches, the sweeper rescores the owned partitions' leads whose due time has come, so a
lead that goes quiet still leaves `hot` (app/domain/schedule.py decides when a lead is due). It runs between
batches and leaves the leads of the batch being saved to that batch.

An erasure request (`DELETE /leads/{id}` puts one among the lead's events, marked by a header) is handled on its
own: the batch stops before it, and once everything before it is saved the lead is erased and a LeadErased is
published, so the erasure cuts the lead's events exactly where it was asked.

A watcher records progress every second (consumers/progress.py): the lag (high watermark minus committed
offset), commits and the event loop's heartbeat; a consumer behind that commits nothing for
`stall_seconds` says so in its log and fails its readiness check. Until the broker answers at start-up,
the worker waits and retries, saying so once in a while, instead of dying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from app import metrics
from app.domain.batch import SourcedEvent
from app.pipeline import BatchOutcome, ScoringPipeline, SourcedErasure
from app.settings import Settings
from app.storage.errors import STORE_UNAVAILABLE
from consumers.group import group_member, uncommitted
from consumers.messages import AcceptedTime, Rejection, parse_message
from consumers.producer import SegmentChangePublisher, change_producer
from consumers.progress import ConsumerProgress, Phase
from consumers.retry import until_broker_answers, until_redis_answers
from consumers.saver import PARSE_CHUNK, BatchSaver
from consumers.topics import ensure_topics
from schemas.events import ERASURE_HEADER, ErasureRequest

log = logging.getLogger(__name__)
_PROGRESS_INTERVAL_SECONDS = 1.0
_STALL_REMINDER_SECONDS = 300.0  # while stalled, the warning repeats this often

Message: TypeAlias = ConsumerRecord[bytes, bytes]
Batch = dict[TopicPartition, list[Message]]


def _is_erasure(message: Message) -> bool:
    return any(name == ERASURE_HEADER for name, _ in message.headers)


class _FinishBatchBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Partitions are handed over only after the batches in flight are written and committed."""

    def __init__(
        self,
        in_flight: asyncio.Lock,
        drain: Callable[[], Awaitable[bool]],
        assigned: Callable[[list[TopicPartition]], Awaitable[None]],
        revoked: Callable[[list[TopicPartition]], None],
    ) -> None:
        self.in_flight = in_flight
        self.drain = drain
        self.assigned = assigned
        self.revoked = revoked

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.in_flight:
            await self.drain()
            self.revoked(revoked)
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))
        await self.assigned(assigned)


class ConsumerWorker:
    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer  # dead letters and segment changes

    def __init__(self, settings: Settings, pipeline: ScoringPipeline, progress: ConsumerProgress | None = None) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.progress = progress or ConsumerProgress(settings.stall_seconds, settings.wedged_seconds)
        self.progress.model_version = pipeline.scorer.version
        self._in_flight = asyncio.Lock()
        # The previous batch's publish, write and commit, running while the next batch is prepared.
        self.saver = BatchSaver(pipeline, self._commit, self._saved)
        # Per owned partition, the next offset not yet committed: the lag is the high watermark minus it.
        self._positions: dict[TopicPartition, int] = {}
        self._accepted_time = AcceptedTime(
            max_age_ms=int(settings.event_max_age_days * 86_400_000),
            max_future_ms=int(settings.event_max_future_seconds * 1000),
        )

    def _make_clients(self) -> None:
        """A consumer and a producer (dead letters and segment changes); a client that failed to start is not
        started again (aiokafka clients are single use), so every connection attempt gets new ones."""
        settings = self.settings
        self.consumer = group_member(settings, settings.consumer_group, start_at="earliest")
        self.producer = change_producer(settings)
        self.pipeline.publish = SegmentChangePublisher(self.producer, settings.segment_changes_topic)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in progress is finished and committed first."""
        watcher = asyncio.create_task(self._watch_progress(stop))
        try:
            if await self._connect(stop):
                await self._consume(stop)
        finally:
            self.progress.phase = Phase.STOPPING
            stop.set()
            await watcher

    async def _connect(self, stop: asyncio.Event) -> bool:
        """Create missing topics and start the clients, waiting for the broker while it cannot be reached.
        False if stopped before it answered."""
        settings = self.settings

        async def start() -> bool:
            self._make_clients()
            await ensure_topics(
                settings.kafka_bootstrap_servers,
                [settings.events_topic, settings.dlq_topic, settings.segment_changes_topic],
                settings.topic_partitions,
                settings.topic_replication_factor,
            )
            await self.producer.start()
            await self.consumer.start()
            return True

        async def stop_clients() -> None:
            await self.producer.stop()
            await self.consumer.stop()

        started = await until_broker_answers(start, stop_clients, stop, self.progress, settings.kafka_bootstrap_servers)
        return started is not None

    async def _consume(self, stop: asyncio.Event) -> None:
        settings = self.settings
        try:
            self.consumer.subscribe(
                [settings.events_topic],
                listener=_FinishBatchBeforeRevoke(self._in_flight, self.drain, self._assigned, self._revoked),
            )
            log.info("consuming %s as group %s", settings.events_topic, settings.consumer_group)
            self.progress.phase = Phase.CONSUMING
            sweeper = asyncio.create_task(self._sweep_until(stop)) if settings.sweeper_enabled else None
            try:
                while not stop.is_set():
                    batch = await self.consumer.getmany(timeout_ms=0, max_records=settings.batch_max_records)
                    if not batch:
                        self.saver.allow_write()  # no next batch to load first: the write goes now
                        batch = await self.consumer.getmany(
                            timeout_ms=settings.batch_timeout_ms, max_records=settings.batch_max_records
                        )
                    if batch:
                        async with self._in_flight:
                            await self.handle(batch, stop)
                async with self._in_flight:
                    await self.drain()
            finally:
                if sweeper is not None:
                    stop.set()
                    await sweeper
                self.saver.abandon()
        finally:
            await self.consumer.stop()
            await self.producer.stop()
            log.info("consumer stopped")

    async def handle(self, batch: Batch, stop: asyncio.Event) -> None:
        """Parse and prepare (load, fold, score) this batch, then hand it to the saver: its publish, write and
        commit overlap with preparing the next batch."""
        erasures, batch = self._erasures_first(batch)
        if erasures and not await self._erase(erasures, stop):
            return
        if not batch:
            return
        saver = self.saver
        started = time.perf_counter()
        valid: list[SourcedEvent] = []
        dead_letters = []
        size = 0
        given = 0.0  # seconds the previous batch's save ran meanwhile: not parsing
        now_ms = time.time_ns() // 1_000_000
        for tp, messages in batch.items():
            size += len(messages)
            for n, message in enumerate(messages, 1):
                if n % PARSE_CHUNK == 0:
                    given += await saver.give_turns()
                parsed = parse_message(
                    message.key, message.value, self.settings.max_message_bytes, self._accepted_time, now_ms
                )
                if isinstance(parsed, Rejection):
                    dead_letters.append(await self._send_to_dlq(message, parsed))
                else:
                    valid.append(SourcedEvent(parsed, tp.partition, message.offset, message.timestamp))
        metrics.BATCH_SIZE.observe(size)
        metrics.BATCH_STAGE_SECONDS.labels("parse").observe(time.perf_counter() - started - given)

        prepared = await until_redis_answers(
            lambda: self.pipeline.prepare(valid, saver.held, between_stages=saver.between_stages), stop
        )
        if prepared is None:
            # Stopping while Redis is down: nothing more is committed (committing this batch's offsets would
            # cover an unsaved one before it); it is redelivered.
            await saver.drain()
            return
        offsets = {tp: messages[-1].offset + 1 for tp, messages in batch.items()}
        await saver.save_after_previous(prepared, offsets, dead_letters, stop)

    def _erasures_first(self, batch: Batch) -> tuple[list[tuple[TopicPartition, Message]], Batch]:
        """The erasure requests that open a partition's messages, and each partition's messages up to its next
        erasure request. From that request on, a partition's messages are fetched again (seek), so each request
        is handled at its place: after what comes before it is saved, before what follows it is read."""
        leading: list[tuple[TopicPartition, Message]] = []
        events: Batch = {}
        for tp, messages in batch.items():
            if not any(message.headers for message in messages):  # nearly always: events carry no headers
                events[tp] = messages
                continue
            start = 0
            while start < len(messages) and _is_erasure(messages[start]):
                start += 1
            end = next((i for i in range(start, len(messages)) if _is_erasure(messages[i])), len(messages))
            leading += [(tp, message) for message in messages[:start]]
            if end < len(messages):
                self.consumer.seek(tp, messages[end].offset)
            if start < end:
                events[tp] = messages[start:end]
        return leading, events

    async def _erase(self, requests: list[tuple[TopicPartition, Message]], stop: asyncio.Event) -> bool:
        """Erase the requested leads once everything before the requests is saved, publish their LeadErased and
        commit past the requests. False if given up (stopping while Redis is down): they are redelivered."""
        if not await self.saver.drain():
            return False
        erasures: list[SourcedErasure] = []
        for tp, message in requests:
            try:
                request = ErasureRequest.model_validate_json(message.value or b"")
            except ValidationError as exc:
                await (await self._send_to_dlq(message, Rejection("invalid_erasure", str(exc)[:500])))
                continue
            if message.key != request.lead_id.encode():
                problem = f"message key {(message.key or b'')[:60]!r} differs from lead_id {request.lead_id!r}"
                await (await self._send_to_dlq(message, Rejection("key_mismatch", problem)))
                continue
            erasures.append(SourcedErasure(request, tp.partition, message.offset))
        if await until_redis_answers(lambda: self.pipeline.erase(erasures), stop) is None:
            return False
        offsets = {tp: message.offset + 1 for tp, message in requests}  # a partition's last request wins
        await self._commit(offsets)
        self._positions.update((tp, offset) for tp, offset in offsets.items() if tp in self._positions)
        self.progress.committed()
        metrics.LEADS_ERASED.inc(len(erasures))
        if erasures:  # by erasure id: an erased lead's id stays out of the logs
            log.info("erased %d leads (erasures %s)", len(erasures), ", ".join(e.request.erasure_id for e in erasures))
        return True

    async def drain(self) -> bool:
        """Wait until the batch being saved is written and committed; False if it was given up."""
        return await self.saver.drain()

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self.consumer.commit(offsets)

    def _saved(self, outcome: BatchOutcome, offsets: dict[TopicPartition, int]) -> None:
        self._positions.update((tp, offset) for tp, offset in offsets.items() if tp in self._positions)
        self.progress.committed()
        metrics.LAST_COMMIT.set_to_current_time()
        self._record_outcome(outcome)

    async def _sweep_until(self, stop: asyncio.Event) -> None:
        """Every sweep interval, rescore the due leads of the partitions this worker owns."""
        interval = self.settings.sweep_interval_seconds
        failures = 0
        while not stop.is_set():
            try:
                for tp in sorted(self.consumer.assignment(), key=lambda tp: tp.partition):
                    await self._sweep_partition(tp.partition, stop)
                failures = 0
            except (*STORE_UNAVAILABLE, KafkaError) as exc:
                failures += 1
                metrics.REDIS_ERRORS.labels("sweep").inc()
                if failures == 1 or failures % 10 == 0:
                    log.error("sweeper failed (%s: %s); retrying", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(interval * (2 ** min(failures, 4)), 30.0))

    async def _sweep_partition(self, partition: int, stop: asyncio.Event) -> None:
        limit = self.settings.sweep_batch
        for _ in range(1000):  # bounded: a huge backlog of due leads is worked off over several rounds
            if stop.is_set():
                return
            # Not while a batch is being prepared; the batch being saved goes on (the sweep leaves its leads).
            async with self._in_flight:
                started = time.perf_counter()
                outcome = await self.pipeline.sweep(partition, limit, self.saver.held)
                metrics.SWEEP_SECONDS.observe(time.perf_counter() - started)
            metrics.SWEPT_LEADS.inc(len(outcome.records))
            self._record_outcome(outcome)
            if len(outcome.records) + len(outcome.fenced) + outcome.deferred < limit:
                break
        due_now = await self.pipeline.store.due_count(partition, self.pipeline.clock_ms())
        metrics.DUE_LEADS.labels(str(partition)).set(due_now)

    async def _send_to_dlq(self, message: ConsumerRecord[bytes, bytes], rejection: Rejection) -> asyncio.Future[object]:
        metrics.INVALID_EVENTS.labels(rejection.reason).inc()
        headers = [
            ("leadscore-reason", rejection.reason.encode()),
            ("leadscore-error", rejection.detail.encode()),
            ("leadscore-source-topic", message.topic.encode()),
            ("leadscore-source-partition", str(message.partition).encode()),
            ("leadscore-source-offset", str(message.offset).encode()),
        ]
        future: asyncio.Future[object] = await self.producer.send(
            self.settings.dlq_topic, value=message.value, key=message.key, headers=headers
        )
        return future

    def _record_outcome(self, outcome: BatchOutcome) -> None:
        for stage, seconds in outcome.stage_seconds.items():
            metrics.BATCH_STAGE_SECONDS.labels(stage).observe(seconds)
        for event_type, count in Counter(item.event.type for item in outcome.applied).items():
            metrics.EVENTS_CONSUMED.labels(event_type).inc(count)
        for signal, count in outcome.invalid_values.items():
            metrics.INVALID_VALUES.labels(signal).inc(count)
        for reason, count in (("replayed", outcome.replayed), ("duplicate", outcome.duplicates)):
            if count:
                metrics.EVENTS_SKIPPED.labels(reason).inc(count)
        if outcome.fenced:
            metrics.EVENTS_SKIPPED.labels("fenced").inc(len(outcome.fenced))
            log.warning("%d lead writes refused: a newer owner had written them (rebalance)", len(outcome.fenced))
        now_ms = time.time_ns() // 1_000_000
        metrics.EVENT_TO_SCORED_SECONDS.observe_many(
            [max(now_ms - item.received_ms, 0) / 1000 for item in outcome.applied if item.received_ms > 0],
        )
        metrics.SCORES.observe_many([r.score for r in outcome.records if r.score is not None])
        flows = Counter((t.segment_set, t.previous or "none", t.current) for t in outcome.transitions)
        for (segment_set, previous, current), count in flows.items():
            metrics.SEGMENT_TRANSITIONS.labels(segment_set, previous, current).inc(count)
        if outcome.changes:
            metrics.SEGMENT_CHANGES_PUBLISHED.inc(len(outcome.changes))

    async def _assigned(self, assigned: list[TopicPartition]) -> None:
        """Start each new partition's lag from its committed offset (or where consuming starts)."""
        for tp in assigned:
            committed = await self.consumer.committed(tp)
            self._positions[tp] = committed if committed is not None else await self.consumer.position(tp)
        self.progress.partitions = frozenset(tp.partition for tp in self._positions)

    def _revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self._positions.pop(tp, None)
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(str(tp.partition))
        self.progress.partitions = frozenset(tp.partition for tp in self._positions)

    async def _watch_progress(self, stop: asyncio.Event) -> None:
        """Every second: the heartbeat, the lag, and a warning while the consumer is behind and commits nothing."""
        progress = self.progress
        warned_at: float | None = None
        while not stop.is_set():
            progress.beat()
            progress.model_version = self.pipeline.scorer.version
            if progress.phase is Phase.CONSUMING:
                lag = uncommitted(self.consumer, self._positions)
                progress.observe_lag(lag)
                for partition, behind in lag.items():
                    metrics.CONSUMER_LAG.labels(str(partition)).set(behind)
            stalled = progress.stalled()
            metrics.CONSUMER_STALLED.set(1 if stalled else 0)
            if stalled and (warned_at is None or time.monotonic() - warned_at >= _STALL_REMINDER_SECONDS):
                warned_at = time.monotonic()
                log.warning(
                    "no progress: %d messages behind (by partition %s) and nothing committed for %.0f s; "
                    "the broker may return no records, or Redis may be failing (see errors above)",
                    progress.total_lag,
                    dict(sorted(progress.lag.items())),
                    progress.seconds_without_progress(),
                )
            elif not stalled and warned_at is not None:
                warned_at = None
                log.info("making progress again (%d messages behind)", progress.total_lag)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=_PROGRESS_INTERVAL_SECONDS)
