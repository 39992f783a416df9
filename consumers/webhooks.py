"""`leadscore webhooks`: segment changes from the change topic to each subscription's URL, in order per lead.

Each subscription has its own delivery loop and its own consumer group (`<webhook_group_prefix>-<name>`), so a
receiver that fails holds back only its own subscription, and the scoring consumer never waits for any of them.
One loop does, batch after batch:

1. fetch a batch (getmany) from the change topic;
2. group each partition's records by lead (the message key), keeping topic order within a lead;
3. deliver each lead's records one after another (consumers/webhook_delivery.py: signed POST, retries with
   backoff), up to `webhook_concurrency` leads at once; a lead's next record waits until the previous one is
   delivered, filtered out, or dead-lettered (produced to `webhook_dlq_topic` and acknowledged by the broker);
4. commit, per partition, the offset after the last record up to which every record is done;
5. fetch the next batch.

So nothing is committed before it is delivered or dead-lettered (at least once: a crash between delivery and
commit delivers again; receivers drop repeats by `change_id`), and a restart resumes at the committed offsets.
A group without commits starts at the end of the topic (`auto_offset_reset="latest"`) and commits that position
at once, so a new subscription gets changes from its first start on, not the history, and a crash before its
first delivery loses nothing. On a stop or when partitions are revoked, the attempts in flight finish, no retry
or next record starts, the done prefix is committed and the rest is delivered again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TypeAlias

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from app import metrics
from app.settings import Settings, WebhookSubscription
from consumers.group import group_member, uncommitted
from consumers.producer import change_producer
from consumers.progress import ConsumerProgress, Phase
from consumers.retry import MAX_RETRY_DELAY_SECONDS, until_broker_answers
from consumers.topics import ensure_topics
from consumers.webhook_delivery import DeadLetterReason, WebhookSender, wants
from schemas.changes import LeadErased, SegmentChange, parse_change_message

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Batch: TypeAlias = dict[TopicPartition, list[Record]]

# Records per fetched batch: the next batch waits for the slowest lead of this one, so keep it modest.
BATCH_MAX_RECORDS = 500
_FETCH_TIMEOUT_MS = 200  # how long an idle loop waits for records before it checks for a stop
# A batch's deliveries may retry for minutes while the loop fetches nothing; aiokafka would then leave the group
# (its max_poll_interval). Liveness is the heartbeat's job (session timeout), and every wait in a delivery is
# bounded (the attempt timeout, the backoff), so the poll interval is made long.
_MAX_POLL_INTERVAL_MS = 24 * 3600 * 1000
_ERROR_CHARS = 200
_WATCH_INTERVAL_SECONDS = 1.0


class _FinishDeliveriesBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, dispatcher: SubscriptionDispatcher) -> None:
        self.dispatcher = dispatcher

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.dispatcher.hand_over(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.dispatcher.start_positions(assigned)


class SubscriptionDispatcher:
    """The delivery loop of one subscription (see the module's docstring for its steps)."""

    consumer: AIOKafkaConsumer

    def __init__(
        self, settings: Settings, subscription: WebhookSubscription, sender: WebhookSender, producer: AIOKafkaProducer
    ) -> None:
        self.settings = settings
        self.subscription = subscription
        self.sender = sender
        self.producer = producer
        self.group = f"{settings.webhook_group_prefix}-{subscription.name}"
        # Set once partitions are assigned and each one's start position is fixed (and committed): a change
        # produced after that is delivered.
        self.assigned = asyncio.Event()
        # Per owned partition, the next offset not yet committed (the lag is the high watermark minus it).
        self.positions: dict[TopicPartition, int] = {}
        self.commits = 0
        self._in_flight = asyncio.Lock()
        # Set on a stop or a revoke: in-flight attempts finish, nothing new starts.
        self._give_up = asyncio.Event()
        self._stopping = False

    def make_consumer(self) -> None:
        settings = self.settings
        self.consumer = group_member(
            settings,
            self.group,
            start_at="latest",
            max_poll_interval_ms=_MAX_POLL_INTERVAL_MS,
            # A revoke waits for the attempts in flight: give it the attempt timeout and some.
            rebalance_timeout_ms=max(settings.kafka_session_timeout_ms, int(settings.webhook_timeout_seconds * 2000)),
        )

    def stop(self) -> None:
        self._stopping = True
        self._give_up.set()

    async def run(self) -> None:
        """Deliver until `stop()`; the consumer must be started (WebhookService does it)."""
        topic = self.settings.segment_changes_topic
        self.consumer.subscribe([topic], listener=_FinishDeliveriesBeforeRevoke(self))
        log.info(
            "webhook %s: delivering %s to %s as group %s",
            self.subscription.name,
            topic,
            self.sender.shown_url,
            self.group,
        )
        try:
            while not self._stopping:
                batch = await self.consumer.getmany(timeout_ms=_FETCH_TIMEOUT_MS, max_records=BATCH_MAX_RECORDS)
                if batch and not self._stopping:
                    async with self._in_flight:
                        await self.deliver_batch(batch)
        finally:
            await self.consumer.stop()

    async def deliver_batch(self, batch: Batch) -> None:
        """Steps 2-4: each lead's records in order, leads concurrently, then the commit of what is done."""
        lanes: dict[tuple[TopicPartition, bytes | None], list[Record]] = {}
        for tp, records in batch.items():
            for record in records:
                lanes.setdefault((tp, record.key), []).append(record)
        done: set[tuple[TopicPartition, int]] = set()
        slots = asyncio.Semaphore(self.settings.webhook_concurrency)

        async def deliver_lead(tp: TopicPartition, records: Sequence[Record]) -> None:
            async with slots:
                for record in records:
                    # A record given up on (stop, revoke) holds back the lead's later ones: they come again.
                    if self._give_up.is_set() or not await self._dispatch(record):
                        return
                    done.add((tp, record.offset))

        async with asyncio.TaskGroup() as lanes_running:
            for (tp, _), records in lanes.items():
                lanes_running.create_task(deliver_lead(tp, records))

        offsets = {}
        for tp, records in batch.items():
            upto = next((r.offset for r in records if (tp, r.offset) not in done), records[-1].offset + 1)
            if upto > records[0].offset:
                offsets[tp] = upto
        await self._commit(offsets)

    async def _dispatch(self, record: Record) -> bool:
        """Deliver, filter out or dead-letter one record: True when done with it, False when given up on."""
        try:
            message = self._parse(record)
        except ValueError as exc:
            return await self._dead_letter(record, DeadLetterReason.UNREADABLE, _short(exc), attempts=0)
        if not wants(self.subscription, message):
            return True
        outcome = await self.sender.deliver(message, record.value, self._give_up)
        if outcome is None:
            return False
        if outcome.reason is None:
            return True
        return await self._dead_letter(record, outcome.reason, outcome.error, outcome.attempts)

    @staticmethod
    def _parse(record: Record) -> SegmentChange | LeadErased:
        if record.value is None:
            raise ValueError("no value (a tombstone)")
        return parse_change_message(record.value)

    async def _dead_letter(self, record: Record, reason: DeadLetterReason, error: str, attempts: int) -> bool:
        """Produce the record to the webhook dead-letter topic and wait for the broker's acknowledgement, retrying
        while the broker fails; False if given up on meanwhile."""
        headers = [
            ("leadscore-subscription", self.subscription.name.encode()),
            ("leadscore-reason", reason.value.encode()),
            ("leadscore-error", error.encode()),
            ("leadscore-attempts", str(attempts).encode()),
            ("leadscore-source-topic", record.topic.encode()),
            ("leadscore-source-partition", str(record.partition).encode()),
            ("leadscore-source-offset", str(record.offset).encode()),
        ]
        delay = 0.1
        while True:
            try:
                await self.producer.send_and_wait(
                    self.settings.webhook_dlq_topic, value=record.value, key=record.key, headers=headers
                )
                break
            except KafkaError as exc:
                log.error("webhook %s: dead-lettering failed (%s); retrying", self.subscription.name, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._give_up.wait(), timeout=delay)
                if self._give_up.is_set():
                    return False
                delay = min(delay * 2, MAX_RETRY_DELAY_SECONDS)
        metrics.WEBHOOK_DELIVERIES.labels(self.subscription.name, "dead_lettered").inc()
        log.warning(
            "webhook %s: dead-lettered %s/%d/%d (lead %s) to %s: %s after %d attempts (%s)",
            self.subscription.name,
            record.topic,
            record.partition,
            record.offset,
            (record.key or b"").decode("utf-8", "replace"),
            self.settings.webhook_dlq_topic,
            reason.value,
            attempts,
            error,
        )
        return True

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            # The partitions went to another member: it delivers from the last commit (repeats, no loss).
            log.warning("webhook %s: commit failed (%s); those deliveries may be repeated", self.subscription.name, exc)
            return
        self.positions.update((tp, offset) for tp, offset in offsets.items() if tp in self.positions)
        self.commits += 1

    async def hand_over(self, revoked: list[TopicPartition]) -> None:
        """Before partitions go: the attempts in flight finish and what is done is committed."""
        self._give_up.set()
        async with self._in_flight:
            if not self._stopping:
                self._give_up.clear()
        for tp in revoked:
            self.positions.pop(tp, None)
        self.assigned.clear()

    async def start_positions(self, assigned: list[TopicPartition]) -> None:
        """Each new partition starts at its committed offset; one without (a new subscription) at the end of the
        topic, committed at once so that a crash before the first delivery does not skip what came meanwhile."""
        fresh: dict[TopicPartition, int] = {}
        try:
            for tp in assigned:
                committed = await self.consumer.committed(tp)
                if committed is None:
                    committed = fresh[tp] = await self.consumer.position(tp)
                self.positions[tp] = committed
            if fresh:
                await self.consumer.commit(fresh)
        except KafkaError as exc:
            log.warning("webhook %s: start positions not fixed (%s)", self.subscription.name, exc)
        log.info("webhook %s: partitions %s assigned", self.subscription.name, sorted(tp.partition for tp in assigned))
        self.assigned.set()

    def lag(self) -> dict[int, int]:
        return uncommitted(self.consumer, self.positions)


class WebhookService:
    """Every subscription's delivery loop in one process, with one producer for dead letters."""

    def __init__(self, settings: Settings, progress: ConsumerProgress | None = None) -> None:
        if not settings.webhooks:
            raise ValueError(
                "no webhook subscriptions: set LEADSCORE_WEBHOOKS to a JSON list of"
                ' {"name", "url", "secret"} objects (README, Webhooks)'
            )
        self.settings = settings
        self.progress = progress or ConsumerProgress(settings.stall_seconds, settings.wedged_seconds)
        self.dispatchers: list[SubscriptionDispatcher] = []
        # httpx logs every request's full URL at INFO (httpcore its connections at DEBUG): a query string may
        # carry a receiver's token. Our own lines show the URL without it.
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

    @property
    def ready(self) -> bool:
        """Every subscription has its partitions and start positions."""
        return bool(self.dispatchers) and all(d.assigned.is_set() for d in self.dispatchers)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; then in-flight attempts finish, what is done is committed, and it returns."""
        settings = self.settings
        producer = await self._connect(stop)
        if producer is None:
            return
        clients = [
            httpx.AsyncClient(
                follow_redirects=False,  # a redirect is a refusal: the subscription should name the final URL
                limits=httpx.Limits(max_connections=settings.webhook_concurrency),
            )
            for _ in settings.webhooks
        ]
        try:
            for subscription, client in zip(settings.webhooks, clients, strict=True):
                sender = WebhookSender(subscription, settings, client)
                dispatcher = SubscriptionDispatcher(settings, subscription, sender, producer)
                dispatcher.make_consumer()
                self.dispatchers.append(dispatcher)
            for dispatcher in self.dispatchers:
                await dispatcher.consumer.start()
            self.progress.phase = Phase.STARTING  # consuming (and ready) once every subscription is assigned
            async with asyncio.TaskGroup() as running:
                for dispatcher in self.dispatchers:
                    running.create_task(dispatcher.run())
                running.create_task(self._watch(stop))
                await stop.wait()
                for dispatcher in self.dispatchers:
                    dispatcher.stop()
        finally:
            self.progress.phase = Phase.STOPPING
            for dispatcher in self.dispatchers:
                await dispatcher.consumer.stop()  # each loop stops its own; this covers one that never ran
            for client in clients:
                await client.aclose()
            await producer.stop()
            log.info("webhooks stopped")

    async def _connect(self, stop: asyncio.Event) -> AIOKafkaProducer | None:
        """Create missing topics and start the dead-letter producer, waiting while the broker cannot be reached;
        None if stopped first."""
        settings = self.settings
        producers: list[AIOKafkaProducer] = []

        async def start() -> AIOKafkaProducer:
            producers.append(change_producer(settings))
            await ensure_topics(
                settings.kafka_bootstrap_servers,
                [settings.segment_changes_topic, settings.webhook_dlq_topic],
                settings.topic_partitions,
                settings.topic_replication_factor,
            )
            await producers[-1].start()
            return producers[-1]

        async def stop_producer() -> None:
            await producers[-1].stop()

        return await until_broker_answers(start, stop_producer, stop, self.progress, settings.kafka_bootstrap_servers)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Every second: the heartbeat for /healthz, the lag per subscription, commits for /readyz."""
        progress = self.progress
        progress.broker_error = None
        commits = 0
        while not stop.is_set():
            progress.beat()
            progress.phase = Phase.CONSUMING if self.ready else Phase.STARTING
            total: dict[int, int] = {}
            for dispatcher in self.dispatchers:
                lag = dispatcher.lag()
                metrics.WEBHOOK_LAG.labels(dispatcher.subscription.name).set(sum(lag.values()))
                for partition, behind in lag.items():
                    total[partition] = total.get(partition, 0) + behind
            progress.observe_lag(total)
            now_commits = sum(dispatcher.commits for dispatcher in self.dispatchers)
            if now_commits != commits:
                commits = now_commits
                progress.committed()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=_WATCH_INTERVAL_SECONDS)


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        text = f"{'.'.join(str(part) for part in first['loc']) or 'message'}: {first['msg']}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:_ERROR_CHARS]
