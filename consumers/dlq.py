"""The dead-letter topic: reading what the consumer refused (`leadscore dlq show`), and sending it back to the
events topic once the cause is fixed (`leadscore dlq replay`), with the original key and value."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.settings import Settings

# A read of the topic ends once nothing new has arrived for this long (the dev broker's high watermark can be
# too low after a multi-record batch, so the end is seen, not asked for).
IDLE_SECONDS = 1.0


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    reason: str
    error: str
    source: str  # topic/partition/offset of the refused message

    def as_json(self) -> dict[str, object]:
        return {
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "at_ms": self.timestamp_ms,
            "reason": self.reason,
            "error": self.error,
            "source": self.source,
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
            "value": None if self.value is None else self.value.decode("utf-8", "replace"),
        }


async def read_dead_letters(
    settings: Settings, *, topic: str | None = None, within_seconds: float = 60.0
) -> list[DeadLetter]:
    """Every message on the dead-letter topic (or `topic`: the webhooks' has the same headers), oldest first per
    partition (no consumer group: nothing committed)."""
    topic = topic or settings.dlq_topic
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()  # a client that failed to start still holds connections
        raise
    letters: list[DeadLetter] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            return []
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        deadline = time.monotonic() + within_seconds
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < IDLE_SECONDS and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            for records in batches.values():
                for record in records:
                    headers = {name: value.decode("utf-8", "replace") for name, value in record.headers}
                    source = "/".join(
                        headers.get(f"leadscore-source-{part}", "?") for part in ("topic", "partition", "offset")
                    )
                    letters.append(
                        DeadLetter(
                            record.partition,
                            record.offset,
                            record.timestamp,
                            record.key,
                            record.value,
                            headers.get("leadscore-reason", "?"),
                            headers.get("leadscore-error", ""),
                            source,
                        )
                    )
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return sorted(letters, key=lambda letter: (letter.partition, letter.offset))


async def replay(settings: Settings, letters: list[DeadLetter]) -> int:
    """Produce each dead letter back to the events topic with its original key and value; returns how many, once
    the broker acknowledged them all. The consumer checks them again: one still invalid goes back to the DLQ."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    try:
        deliveries = []
        for letter in letters:
            deliveries.append(await producer.send(settings.events_topic, value=letter.value, key=letter.key))
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return len(letters)
