"""Helpers for tests: waits on conditions with a deadline, and an independent Kafka client.

Tests wait for a condition, never for a fixed time. Events are produced with confluent-kafka
(librdkafka), a different client from the aiokafka the service uses, so a test's producer
cannot share a bug with the code under test.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from app.pipeline import SourcedEvent, fold_batch
from app.records import LeadRecord
from app.settings import ServiceConfig
from app.simulator import SimulationSpec, simulate_history
from schemas.events import Event

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
DEFAULT_INTERVAL = 0.05


def _timeout_error(message: str, timeout: float, last: object, error: BaseException | None) -> AssertionError:
    detail = f"last error: {error!r}" if error is not None else f"last value: {last!r}"
    return AssertionError(f"timed out after {timeout:g}s waiting for {message} ({detail})")


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    message: str = "the condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `predicate` until it returns something truthy, and return that.

    Exceptions of the `ignore` types count as "not yet" (e.g. ConnectionError while a
    server restarts); on timeout an AssertionError names `message` and the last outcome.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            last, error = predicate(), None
            if last:
                return last
        except ignore as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _timeout_error(message, timeout, last, error)
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], Awaitable[T]],
    *,
    # A timeout parameter rather than asyncio.timeout(): on expiry we report the last outcome.
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    interval: float = DEFAULT_INTERVAL,
    message: str = "the condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """The async twin of `wait_until`: awaits `predicate()` until it is truthy, and returns it."""
    deadline = time.monotonic() + timeout
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            last, error = await predicate(), None
            if last:
                return last
        except ignore as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _timeout_error(message, timeout, last, error)
        await asyncio.sleep(interval)


def _producer(bootstrap_servers: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            # The test broker (Tansu) does not support the idempotent producer.
            "enable.idempotence": False,
            "acks": "all",
            "linger.ms": 5,
            "client.id": "leadscore-tests",
        }
    )


def produce_raw(
    bootstrap_servers: str,
    topic: str,
    records: Iterable[tuple[bytes | str | None, bytes | str]],
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Produce (key, value) records as they are (malformed ones included); returns the count.

    Flushes and asserts every record was acknowledged, so the caller may rely on them
    being in the topic when this returns.
    """
    producer = _producer(bootstrap_servers)
    errors: list[str] = []

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(f"{message.topic()}: {error}")

    count = 0
    try:
        for key, value in records:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            count += 1
            producer.poll(0)  # serve delivery callbacks so the local queue never fills up
        remaining = producer.flush(timeout)
    finally:
        producer.close()
    assert remaining == 0, f"{remaining} of {count} records to {topic!r} not delivered within {timeout:g}s"
    assert not errors, f"delivery failed for {len(errors)} records: {errors[:5]}"
    return count


def produce_events(
    bootstrap_servers: str,
    topic: str,
    events: Iterable[Mapping[str, Any]],
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Produce events as UTF-8 JSON keyed by their lead_id (the wire contract); returns the count."""
    return produce_raw(
        bootstrap_servers,
        topic,
        ((str(event["lead_id"]), orjson.dumps(event)) for event in events),
        timeout=timeout,
    )


@dataclass(frozen=True)
class ConsumedRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def json(self) -> Any:
        assert self.value is not None, f"record at {self.partition}/{self.offset} has no value"
        return orjson.loads(self.value)


def read_topic(
    bootstrap_servers: str,
    topic: str,
    *,
    expected: int,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[ConsumedRecord]:
    """Read a topic from the beginning until `expected` records arrived (AssertionError if not)."""
    records = _read_from_beginning(bootstrap_servers, topic, timeout=timeout, wait=0.2, stop_after=expected)
    assert len(records) >= expected, (
        f"read {len(records)} of {expected} expected records from {topic!r} within {timeout:g}s"
    )
    return records


def read_available(
    bootstrap_servers: str, topic: str, *, idle: float = 0.5, timeout: float = DEFAULT_TIMEOUT
) -> list[ConsumedRecord]:
    """Everything in a topic right now: read from the beginning until nothing new arrives for `idle` s."""
    return _read_from_beginning(bootstrap_servers, topic, timeout=timeout, wait=idle, stop_after=None)


def _read_from_beginning(
    bootstrap_servers: str, topic: str, *, timeout: float, wait: float, stop_after: int | None
) -> list[ConsumedRecord]:
    """Partitions are assigned directly rather than joined through a group, which skips the broker's
    group-join delay and commits nothing. Stops at `stop_after` records, or (None) at the first empty wait."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "leadscore-tests-reader",  # required by librdkafka, unused with assign()
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    records: list[ConsumedRecord] = []
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (stop_after is None or len(records) < stop_after):
            wanted = 1000 if stop_after is None else stop_after - len(records)
            batch = consumer.consume(num_messages=wanted, timeout=wait)
            if not batch and stop_after is None:
                break
            for message in batch:
                error = message.error()
                assert error is None, f"consuming {topic!r} failed: {error}"
                records.append(
                    ConsumedRecord(message.partition() or 0, message.offset() or 0, message.key(), message.value())
                )
    finally:
        consumer.close()
    return records


_TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code


async def create_topics(
    bootstrap_servers: str,
    names: Sequence[str],
    *,
    partitions: int = 1,
    exist_ok: bool = False,
) -> None:
    """Create topics (replication factor 1: the local broker has one node); fails on any error."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="leadscore-tests")
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
        )
    finally:
        await admin.close()
    # The admin client returns per-topic error codes instead of raising.
    failures = [
        f"{topic}: error {code} {' '.join(str(detail) for detail in details if detail)}".strip()
        # Older response versions carry no error message, hence *details.
        for topic, code, *details in response.topic_errors
        if code != 0 and not (exist_ok and code == _TOPIC_ALREADY_EXISTS)
    ]
    assert not failures, f"creating topics failed: {failures}"


def simulated_leads(config: ServiceConfig, leads: int, events: int, seed: int) -> list[LeadRecord]:
    """Lead records folded from a simulated history (varied types, properties and profiles), not scored."""
    history = itertools.islice(simulate_history(SimulationSpec(leads=leads, seed=seed)), events)
    batch = [SourcedEvent(Event.model_validate(event), 0, n) for n, event in enumerate(history)]
    return list(fold_batch({}, batch, config.features, dedupe_window=8).records.values())
