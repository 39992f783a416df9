"""Producing to Kafka: events (the simulator, `leadscore dev`) and segment changes (the worker, `rescore`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence, Set
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from app.settings import Settings

# Bounds the key -> partition memo (murmur2 is pure Python, ~3 µs a key); cleared when full.
KEY_PARTITION_CACHE_SIZE = 100_000
# A batch's segment changes (~300 B each, a few thousand) go out as one record batch per partition:
# aiokafka sends a partition's batches one round trip after another, and in the consumer each round
# trip waits for the event loop, busy preparing the next batch. (The default is 16 KB.)
RECORD_BATCH_BYTES = 1_048_576
REQUEST_BYTES = 8 * RECORD_BATCH_BYTES


def change_producer(settings: Settings) -> AIOKafkaProducer:
    """The producer for segment changes (and the consumer's dead letters), not started yet."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        max_batch_size=RECORD_BATCH_BYTES,
        max_request_size=REQUEST_BYTES,
    )


class EventProducer:
    """Keyed by lead_id, so a lead's events stay in order on one partition.

    Events gathered for `linger_ms` go out as one record batch per partition (up to RECORD_BATCH_BYTES), so
    a longer linger means fewer, larger batches: what the dev broker needs (it lists every stored batch on
    each fetch), at the price of that much delay.
    """

    def __init__(
        self, bootstrap_servers: str, topic: str, *, enable_idempotence: bool = False, linger_ms: float = 5.0
    ) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            enable_idempotence=enable_idempotence,
            linger_ms=linger_ms,
            max_batch_size=RECORD_BATCH_BYTES,
            max_request_size=REQUEST_BYTES,
        )

    async def __aenter__(self) -> EventProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, event: Mapping[str, Any]) -> None:
        """Queue one event (delivery is awaited by `flush`)."""
        await self._producer.send(self.topic, value=orjson.dumps(event), key=str(event["lead_id"]).encode())

    async def flush(self) -> None:
        await self._producer.flush()

    async def send_paced(self, events: Iterable[Mapping[str, Any]], rate: float, limit: int | None = None) -> int:
        """Send at about `rate` events/s (0 = as fast as possible); stops after `limit` events if given."""
        sent = 0
        started = time.monotonic()
        for event in events:
            if limit is not None and sent >= limit:
                break
            await self.send(event)
            sent += 1
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await self.flush()
        return sent


class SegmentChangePublisher:
    """Publishes serialized segment changes keyed by lead and returns once the broker acknowledged all of them.

    The pipeline writes Redis only after this returns, which is what makes the changes at-least-once: a
    failure raises, and the batch is redone. Messages go out as record batches built here, one or a few
    per partition, instead of one `send` per message (tens of µs of Python each).
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        # aiokafka has no public accessor for the partitioner `send` uses; choosing the same one keeps a
        # lead's changes on the partition, in the order, that keyed sends would give them.
        self._partitioner: Callable[[bytes, list[int], list[int]], int] = producer._partitioner
        # key -> partition, valid for the partition set it was computed over (a grown topic moves keys).
        self._partition_of: dict[bytes, int] = {}
        self._partitions: frozenset[int] = frozenset()

    async def __call__(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """(key, value) pairs: key = lead_id UTF-8, value = the change event JSON. Returns once all are acknowledged.

        Per partition, messages keep their input order. If any batch fails, this waits for the others to
        settle and raises the first error.
        """
        if not messages:
            return
        by_partition = self._by_partition(await self.producer.partitions_for(self.topic), messages)
        await _settle([self._publish_partition(partition, group) for partition, group in by_partition.items()])

    def _by_partition(
        self, partitions: Set[int], messages: Sequence[tuple[bytes, bytes]]
    ) -> dict[int, list[tuple[bytes, bytes]]]:
        """Groups messages by the partition `send(topic, key=key)` would pick from the same metadata."""
        if partitions != self._partitions or len(self._partition_of) >= KEY_PARTITION_CACHE_SIZE:
            self._partitions = frozenset(partitions)
            self._partition_of = {}
        partition_of = self._partition_of
        all_partitions: list[int] | None = None
        available: list[int] = []
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for message in messages:
            key = message[0]
            partition = partition_of.get(key)
            if partition is None:
                if all_partitions is None:
                    # The arguments `send` passes: its list of the metadata's set, and the available ones.
                    all_partitions = list(partitions)
                    available = list(self.producer.client.cluster.available_partitions_for_topic(self.topic))
                partition = partition_of[key] = self._partitioner(key, all_partitions, available)
            group = by_partition.get(partition)
            if group is None:
                by_partition[partition] = [message]
            else:
                group.append(message)
        return by_partition

    async def _publish_partition(self, partition: int, messages: list[tuple[bytes, bytes]]) -> None:
        """Sends one partition's messages in order as record batches, then waits for their acknowledgements."""
        acks: list[asyncio.Future[Any]] = []
        try:
            batch = self.producer.create_batch()
            for key, value in messages:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    # Full. aiokafka delivers a partition's batches one at a time in submission order, and
                    # `send_batch` waits until the previous one is on its way.
                    acks.append(await self.producer.send_batch(batch, self.topic, partition=partition))
                    batch = self.producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise RuntimeError(f"an empty record batch refused a {len(value)}-byte message to {self.topic}")
            acks.append(await self.producer.send_batch(batch, self.topic, partition=partition))
        except Exception:
            # Nothing submitted may still be in flight when the call fails: the caller redoes the batch.
            await asyncio.gather(*acks, return_exceptions=True)
            raise
        await _settle(acks)


async def _settle(awaitables: Iterable[Awaitable[object]]) -> None:
    """Waits for every one to finish, then raises the first failure (not at the first, which would leave
    the rest running while the caller already reacts)."""
    for outcome in await asyncio.gather(*awaitables, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
