"""Integration tests for SegmentChangePublisher: batched publishing of segment changes to a real broker."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaTimeoutError

from consumers.producer import SegmentChangePublisher
from devtools.servers import start_broker
from tests.support import ConsumedRecord, create_topics, read_topic

pytestmark = pytest.mark.integration

# A plain `send` per key after the publish: its partition is the one the publisher must have picked.
REFERENCE = b"reference"
# The librdkafka reader's first fetch from a topic can take a few seconds on the Tansu broker.
READ_TIMEOUT = 30.0


def change_messages(count: int, keys: int, pad: int = 0) -> list[tuple[bytes, bytes]]:
    """`count` (key, value) pairs over `keys` leads, interleaved so each lead's messages are spread out;
    the value carries its input position, `seq`."""
    return [
        (f"L-{i % keys:05d}".encode(), orjson.dumps({"lead_id": f"L-{i % keys:05d}", "seq": i, "pad": "x" * pad}))
        for i in range(count)
    ]


async def reference_partitions(producer: AIOKafkaProducer, topic: str, keys: set[bytes]) -> dict[bytes, int]:
    """The partition a plain keyed `send` picks for each key (each sends one REFERENCE record)."""
    ordered = sorted(keys)
    futures = [await producer.send(topic, key=key, value=REFERENCE) for key in ordered]
    return {key: sent.partition for key, sent in zip(ordered, await asyncio.gather(*futures), strict=True)}


def published(records: list[ConsumedRecord]) -> list[ConsumedRecord]:
    return [record for record in records if record.value != REFERENCE]


def assert_routed_like_send(records: list[ConsumedRecord], expected: dict[bytes, int]) -> None:
    """Every key's messages sit on exactly the partition a plain `send` picks for that key."""
    partitions_of: dict[bytes | None, set[int]] = defaultdict(set)
    for record in published(records):
        partitions_of[record.key].add(record.partition)
    misrouted = {key: found for key, found in partitions_of.items() if key is None or found != {expected[key]}}
    assert not misrouted, f"{len(misrouted)} keys off the partition `send` picks, e.g. {list(misrouted.items())[:3]}"


def assert_each_key_in_input_order(records: list[ConsumedRecord], messages: Sequence[tuple[bytes, bytes]]) -> None:
    by_offset = sorted(published(records), key=lambda record: (record.partition, record.offset))
    seen: dict[bytes | None, list[int]] = defaultdict(list)
    for record in by_offset:
        seen[record.key].append(record.json()["seq"])
    sent: dict[bytes | None, list[int]] = defaultdict(list)
    for key, value in messages:
        sent[key].append(orjson.loads(value)["seq"])
    out_of_order = [key for key in sent if seen[key] != sent[key]]
    assert not out_of_order, f"{len(out_of_order)} keys out of input order, e.g. {out_of_order[:3]}"


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """Configured as the worker's producer, except idempotence (the Tansu test broker lacks it)."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def count_batches(producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """Counts the record batches the producer is handed, per partition (they are still sent)."""
    counts: Counter[int] = Counter()
    send_batch = producer.send_batch

    async def counting(batch: Any, topic: str, *, partition: int) -> Any:
        counts[partition] += 1
        return await send_batch(batch, topic, partition=partition)

    monkeypatch.setattr(producer, "send_batch", counting)
    return counts


async def test_every_message_arrives_exactly_once_on_the_partition_send_picks_in_input_order(
    kafka_bootstrap: str, producer: AIOKafkaProducer, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("changes")
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    messages = change_messages(5_000, keys=300)

    await SegmentChangePublisher(producer, topic)(messages)
    expected = await reference_partitions(producer, topic, {key for key, _ in messages})

    records = read_topic(kafka_bootstrap, topic, expected=len(messages) + len(expected), timeout=READ_TIMEOUT)
    assert Counter((r.key, r.value) for r in published(records)) == Counter(messages)
    assert set(expected.values()) == {0, 1, 2}, "300 keys should spread over all 3 partitions"
    assert_routed_like_send(records, expected)
    assert_each_key_in_input_order(records, messages)


async def test_a_publish_needing_many_batches_per_partition_arrives_complete_and_in_order(
    kafka_bootstrap: str,
    producer: AIOKafkaProducer,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = unique_name("changes")
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    messages = change_messages(12_000, keys=500, pad=350)  # ~400-byte values: ~4.8 MB in 16 kB batches
    batches = count_batches(producer, monkeypatch)

    await SegmentChangePublisher(producer, topic)(messages)

    assert set(batches) == {0, 1, 2}
    assert min(batches.values()) >= 10, f"expected many batches per partition, got {dict(batches)}"
    records = read_topic(kafka_bootstrap, topic, expected=len(messages), timeout=READ_TIMEOUT)
    assert Counter((r.key, r.value) for r in records) == Counter(messages)
    assert_each_key_in_input_order(records, messages)


async def test_an_empty_publish_sends_nothing(
    kafka_bootstrap: str,
    producer: AIOKafkaProducer,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = unique_name("changes")
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    batches = count_batches(producer, monkeypatch)

    await SegmentChangePublisher(producer, topic)([])
    # Anything the empty call had sent was acknowledged before it returned, so it would precede this marker.
    await producer.send_and_wait(topic, key=b"L-00000", value=b"marker", partition=0)

    assert not batches
    records = read_topic(kafka_bootstrap, topic, expected=1, timeout=READ_TIMEOUT)
    assert [(r.partition, r.offset, r.value) for r in records] == [(0, 0, b"marker")]


async def test_keys_follow_the_partitions_send_picks_after_the_partition_count_grows(
    kafka_bootstrap: str, producer: AIOKafkaProducer, unique_name: Callable[[str], str]
) -> None:
    # Tansu has no CreatePartitions; deleting the topic and creating it again with more partitions changes
    # the producer's metadata for the topic as growth would, which is what the publisher has to notice.
    topic = unique_name("changes")
    await create_topics(kafka_bootstrap, [topic], partitions=2)
    publish = SegmentChangePublisher(producer, topic)
    messages = change_messages(600, keys=60)
    await publish(messages)  # computes every key's partition over 2 partitions

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="leadscore-tests")
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    await create_topics(kafka_bootstrap, [topic], partitions=5)
    await producer.client.force_metadata_update()
    assert await producer.partitions_for(topic) == {0, 1, 2, 3, 4}

    await publish(messages)
    expected = await reference_partitions(producer, topic, {key for key, _ in messages})

    assert max(expected.values()) >= 2, "some keys should move to the new partitions"
    records = read_topic(kafka_bootstrap, topic, expected=len(messages) + len(expected), timeout=READ_TIMEOUT)
    assert Counter((r.key, r.value) for r in published(records)) == Counter(messages)
    assert_routed_like_send(records, expected)


async def test_a_publish_the_broker_never_acknowledges_raises(
    tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("changes")
    with start_broker(workdir=tmp_path / "broker") as broker:  # a broker of its own, to stop
        await create_topics(broker.bootstrap_servers, [topic], partitions=3)
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap_servers, acks="all", enable_idempotence=False, request_timeout_ms=2000
        )
        await producer.start()
        await producer.partitions_for(topic)  # the metadata the publisher will rely on, fetched while it is up
    try:
        publish = SegmentChangePublisher(producer, topic)
        with pytest.raises(KafkaTimeoutError):
            await asyncio.wait_for(publish(change_messages(2_000, keys=100, pad=350)), timeout=30)
    finally:
        await producer.stop()
