"""Shared test helpers: waiting on conditions, producing and reading topics, running leadscore's own processes
against the session's Redis and broker, and checking stored state against a clean replay of the events."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import orjson
import pytest
import redis
import redis.cluster
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app.domain.batch import SourcedEvent, fold_batch
from app.domain.lead import LeadRecord
from app.domain.segments import Column, Condition, SegmentRules
from app.settings import ServiceConfig, Settings
from app.storage.codec import RecordCodec, RecordLayout, UnknownRecordLayout, default_codec
from app.storage.keys import KeySpace
from devtools.servers import LocalProcess, StackNames, free_port, leadscore_process, service_env
from devtools.simulator import SimulationSpec, simulate_history
from models.state import LeadState, fold
from models.vector import FeatureValue
from schemas.events import Event

REPO_ROOT = Path(__file__).resolve().parent.parent


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


@asynccontextmanager
async def in_process(app: FastAPI, headers: Mapping[str, str] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running (the real store and model), and a client that calls it in-process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://leadscore.test", headers=dict(headers or {})
        ) as client:
            yield client


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
    headers: tuple[tuple[str, bytes], ...] = ()

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
    group-join delay and commits nothing. Stops at `stop_after` records, or (None) at the first empty wait once
    every partition is read up to its high watermark as of the start: on a slow broker an empty wait alone can
    come before the rest of the log does. (The dev broker's watermark can fall short of the last record, but
    never past the start of the last batch, and a batch arrives whole.)"""
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
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in partitions}
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
        reached = {p: low for p, (low, _) in marks.items()}  # the next offset to read, per partition
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (stop_after is None or len(records) < stop_after):
            wanted = 1000 if stop_after is None else stop_after - len(records)
            batch = consumer.consume(num_messages=wanted, timeout=wait)
            if not batch and stop_after is None and all(reached[p] >= high for p, (_, high) in marks.items()):
                break
            for message in batch:
                error = message.error()
                assert error is None, f"consuming {topic!r} failed: {error}"
                headers = tuple((name, value or b"") for name, value in message.headers() or ())
                records.append(
                    ConsumedRecord(
                        message.partition() or 0, message.offset() or 0, message.key(), message.value(), headers
                    )
                )
                reached[message.partition() or 0] = (message.offset() or 0) + 1
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


EVENT_TYPES = (
    "email_send",
    "email_open",
    "email_click",
    "page_view",
    "form_fill",
    "webinar_attend",
    "demo_request",
    "chat_started",  # not in the feature config: accepted and counted all the same
)
PAGE_CATEGORIES = ("home", "blog", "pricing", "docs", "case_study")


def stack_env(redis_url: str, kafka_bootstrap: str, names: StackNames, **extra: str) -> dict[str, str]:
    """A service environment for tests: the caller's LEADSCORE_* variables are dropped so tests are hermetic,
    except a model chosen for the test run (e.g. a freshly trained one)."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("LEADSCORE_")}
    if "LEADSCORE_MODEL_PATH" in os.environ:
        base["LEADSCORE_MODEL_PATH"] = os.environ["LEADSCORE_MODEL_PATH"]
    # fetch_max_wait_ms: the local broker holds an empty fetch that long (Kafka answers when data arrives);
    # the tests' logs stay small enough for 10 ms (README, "The dev broker").
    defaults = {"topic_partitions": "4", "fetch_max_wait_ms": "10"}
    return service_env(base, redis_url, kafka_bootstrap, names, **(defaults | extra))


def run_leadscore(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`leadscore <args>` as a user runs it, with its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def start_consumer(env: dict[str, str], log_dir: Path, name: str = "consumer") -> tuple[LocalProcess, int]:
    metrics_port = free_port()
    process = leadscore_process(name, ["consume", "--metrics-port", str(metrics_port)], env, log_dir)
    process.start()
    return process, metrics_port


def start_api(env: dict[str, str], log_dir: Path) -> tuple[LocalProcess, str]:
    port = free_port()
    process = leadscore_process("api", ["serve", "--port", str(port)], env, log_dir)
    process.start()
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.running, f"API exited: {process.log_tail()}"
        return httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200

    wait_until(ready, timeout=30, message="API ready", ignore=(httpx.TransportError,))
    return process, base


def synthetic_events(leads: int, per_lead: int, seed: int, prefix: str = "L") -> list[dict[str, Any]]:
    """Events for `leads` leads over the last 20 days, leads interleaved, each lead's events in time order."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=30)
    by_lead: list[list[dict[str, Any]]] = []
    for n in range(leads):
        lead = f"{prefix}-{n:05d}"
        # all in the past 30 days: the consumer sends future timestamps to the DLQ
        moments = sorted(start + timedelta(minutes=rng.randint(0, 43_000)) for _ in range(rng.randint(2, per_lead + 1)))
        profile = {"industry": rng.choice(["software", "finance"]), "country": rng.choice(["US", "DE"])}
        events = [
            {
                "event_id": f"{lead}-p",
                "lead_id": lead,
                "type": "profile_update",
                "ts": _rfc3339(moments[0]),
                "properties": profile,
            }
        ]
        for k, at in enumerate(moments[1:]):
            event_type = rng.choice(EVENT_TYPES)
            properties = {"category": rng.choice(PAGE_CATEGORIES)} if event_type == "page_view" else {}
            # both documented timestamp forms
            ts: str | int = _rfc3339(at) if k % 2 else int(at.timestamp() * 1000)
            events.append(
                {"event_id": f"{lead}-{k}", "lead_id": lead, "type": event_type, "ts": ts, "properties": properties}
            )
        by_lead.append(events)
    return _interleave(by_lead)


def _rfc3339(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _interleave(by_lead: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Round-robin across leads, keeping each lead's own order: what a real stream looks like."""
    out: list[dict[str, Any]] = []
    for position in range(max((len(events) for events in by_lead), default=0)):
        out.extend(events[position] for events in by_lead if position < len(events))
    return out


def expected_counts(events: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for event in events:
        counts.setdefault(event["lead_id"], Counter())[event["type"]] += 1
    return counts


_CODEC = RecordCodec(default_codec().layout)


Client = redis.Redis | redis.cluster.RedisCluster


@dataclass(frozen=True)
class RedisBackend:
    """A Redis the service runs on in a test: the session's single redis-server or its three-master cluster."""

    name: str
    url: str
    client: Client  # emptied before the test
    clustered: bool

    @property
    def keys(self) -> KeySpace:
        return key_space(self.client)

    def service_settings(self, **overrides: Any) -> Settings:
        """In-process service settings on this Redis."""
        return Settings(redis_url=self.url, redis_cluster=self.clustered, **overrides)

    @property
    def settings(self) -> dict[str, str]:
        """The LEADSCORE_* settings (lower case, without the prefix) that point the service at it."""
        return {"redis_cluster": "true" if self.clustered else "false"}


def key_space(client: Client) -> KeySpace:
    return KeySpace(clustered=isinstance(client, redis.cluster.RedisCluster))


def decode_stored(client: Client, lead_id: str, raw: bytes) -> LeadRecord:
    """A stored value decoded as the service's store does: with the layout it names, read from Redis if new."""
    try:
        return _CODEC.decode(lead_id, raw)
    except UnknownRecordLayout as unknown:
        keys = key_space(client)
        names = client.get(keys.layout(unknown.fingerprint, keys.group(lead_id)))
        if names is None:
            raise
        _CODEC.add_layout(RecordLayout.from_json(names))
        return _CODEC.decode(lead_id, raw)


def stored_records(client: Client) -> dict[str, LeadRecord]:
    """Every lead record in Redis (one Redis or a cluster), decoded."""
    keys = key_space(client)
    names = list(client.scan_iter(match=keys.lead_pattern(), count=1000))
    if isinstance(client, redis.cluster.RedisCluster):
        values = client.mget_nonatomic(names) if names else []
    else:
        values = client.mget(names) if names else []
    records = {}
    for name, raw in zip(names, values, strict=True):
        lead_id = keys.lead_id(name.decode())
        records[lead_id] = decode_stored(client, lead_id, raw)
    return records


def segment_members(client: Client, segment_set: str, segment: str) -> set[str]:
    keys = key_space(client)
    return {
        m.decode() for group in keys.groups for m in client.zrange(keys.segment(segment_set, segment, group), 0, -1)
    }


def stored_event_total(client: Client) -> int:
    return sum(record.state.event_count for record in stored_records(client).values())


def assert_matches_clean_replay(client: Client, events: list[dict[str, Any]]) -> None:
    """Redis holds exactly what one clean pass over `events` gives: counts, features, segment index."""
    config = Settings().service_config
    expected = expected_counts(events)
    records = stored_records(client)
    assert set(records) == set(expected)
    by_lead: dict[str, list[Event]] = {}
    for raw in events:
        by_lead.setdefault(str(raw["lead_id"]), []).append(Event.model_validate(raw))
    for lead_id, record in records.items():
        assert record.state.counts == dict(expected[lead_id]), lead_id
        clean = fold(LeadState(), by_lead[lead_id], config.features)
        assert record.state.decayed == pytest.approx(clean.decayed, rel=1e-12), lead_id
        assert (record.state.anchor_ms, record.state.active_days) == (clean.anchor_ms, clean.active_days), lead_id
        assert record.state.profile == clean.profile, lead_id
    # the segment index agrees with the records: each lead in exactly its own segment
    for segment_set, rules in config.segments.sets.items():
        for name in rules.names:
            members = segment_members(client, segment_set, name)
            assert members == {lead for lead, r in records.items() if r.segments.get(segment_set) == name}, name


def metric_total(metrics_url: str, family: str) -> float:
    """Sum of a counter family's samples on a Prometheus endpoint (0 when absent)."""
    return metric_sum(metrics_url, f"{family}_total")


def metric_sum(metrics_url: str, sample_name: str) -> float:
    """Sum of the samples of that name (every label set) on a Prometheus endpoint (0 when absent): a gauge's
    value, or a counter's with its `_total`."""
    text = httpx.get(metrics_url, timeout=5).text
    return sum(
        sample.value
        for metric in text_string_to_metric_families(text)
        for sample in metric.samples
        if sample.name == sample_name
    )


# --- segment rules: a reference reading of the rules, one lead at a time ---------------------------------------------


@dataclass(frozen=True)
class LeadFacts:
    """What a segment rule can look at, for one lead."""

    score: float
    features: Mapping[str, FeatureValue] = field(default_factory=dict)
    profile: Mapping[str, str] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)

    def read(self, rule_field: str) -> Any:
        """A rule field's value: None where it does not exist; an event type never seen counts 0."""
        if rule_field == "score":
            return self.score
        namespace, _, name = rule_field.partition(".")
        if namespace == "count":
            return self.counts.get(name, 0)
        return (self.features if namespace == "feature" else self.profile).get(name)


def reference_holds(condition: Condition, lead: LeadFacts) -> bool:
    """The rule language as DESIGN.md states it, in plain Python: the oracle the batch engine is held to."""
    if condition.all is not None:
        return all(reference_holds(part, lead) for part in condition.all)
    if condition.any is not None:
        return any(reference_holds(part, lead) for part in condition.any)
    actual, op, expected = lead.read(str(condition.field)), condition.op, condition.value
    if op == "exists":
        return (actual is not None) == (expected is None or bool(expected))
    if op in ("in", "not_in"):
        return (actual in set(expected)) == (op == "in")
    if actual is None:
        return False
    comparisons: dict[str, Callable[[Any, Any], bool]] = {
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
    }
    try:
        return comparisons[str(op)](actual, expected)
    except TypeError:  # e.g. a number against a string: no match
        return False


def reference_segment(rules: SegmentRules, lead: LeadFacts, current: str | None = None) -> str:
    """First match wins; the current segment also matches while its stay_while holds; the last rule catches all."""
    for rule in rules.rules:
        staying = rule.stay_while is not None and rule.name == current and reference_holds(rule.stay_while, lead)
        if staying or reference_holds(rule.when, lead):
            return rule.name
    return rules.rules[-1].name


def rule_columns(
    leads: Sequence[LeadFacts], categorical: frozenset[str] = frozenset(), requested: list[str] | None = None
) -> Column:
    """Rule columns in the pipeline's conventions (float64 with NaN, or objects), built from the facts the reference
    reads; each requested field is appended to `requested`."""

    def column(rule_field: str) -> np.ndarray:
        if requested is not None:
            requested.append(rule_field)
        values = [lead.read(rule_field) for lead in leads]
        if rule_field.startswith("profile.") or rule_field.removeprefix("feature.") in categorical:
            return np.array(values, dtype=object)
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    return column


def segment_of(rules: SegmentRules, lead: LeadFacts, current: str | None = None) -> str:
    """One lead through the batch engine."""
    (segment,) = rules.assign_batch(rule_columns([lead]), 1, [current])
    return segment
