"""Freshness: from an event's produce call to its score being readable through the API, under steady load.

Real `leadscore consume` and `leadscore serve` processes run; background events flow at a fixed rate;
probe events for lead ids nobody has used are produced now and then, and each probe polls
GET /leads/{id} every millisecond or so until the lead's event_counts include the probe. Its latency is
readable time minus produce time, with nothing subtracted (poll interval and HTTP time included).
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from bench.httpclient import HttpConnection
from bench.stats import percentile
from bench.workload import Message, kafka_producer
from devtools.simulator import rfc3339_ms

LOOPBACK = "127.0.0.1"
PROBE_TYPE = "form_fill"
# Poll every millisecond while a probe is young, then every 5 ms: a late probe keeps ±5 ms precision
# (the target is 100 ms) without its polling turning into load on the API it is measuring.
PROBE_FAST_POLL_SECONDS = 0.001
PROBE_FAST_POLL_FOR_SECONDS = 0.1
PROBE_SLOW_POLL_SECONDS = 0.005
PROBE_TIMEOUT_SECONDS = 5.0
# librdkafka's default linger: what a producer's event waits is part of the latency, so it stays in.
# (At 1 ms the broker spent ~0.7 of the machine's 2 cores on tiny produce requests at 5,000 events/s.)
PRODUCER_LINGER_MS = 5.0


@dataclass(frozen=True)
class FreshnessPlan:
    rate: float  # background events/s
    warmup_seconds: float  # background traffic before probing starts
    seconds: float  # probing window
    probe_interval: float  # a probe every this many seconds...
    max_in_flight: int  # ...unless this many are still polling


class ProbeSource:
    """Probe events for fresh lead ids: each lead's first and only event, so the lead appears when scored."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.count = 0

    def next(self) -> tuple[str, bytes]:
        self.count += 1
        lead = f"P-{self.tag}-{self.count:06d}"
        event = {
            "event_id": f"probe-{self.tag}-{self.count}",
            "lead_id": lead,
            "type": PROBE_TYPE,
            "ts": rfc3339_ms(time.time_ns() // 1_000_000),
            "properties": {"form": "contact", "page": "https://www.example.com/contact"},
        }
        return lead, orjson.dumps(event)


def _produce(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key)
            return
        except BufferError:
            producer.poll(0.001)


async def _readable_after(
    connection: HttpConnection, lead: str, produced_at: float, give_up_after: float = PROBE_TIMEOUT_SECONDS
) -> float | None:
    """Seconds from `produced_at` until GET /leads/{lead} shows the probe; None if not within `give_up_after`."""
    path = f"/leads/{lead}"
    deadline = produced_at + give_up_after
    while True:
        status, body = await connection.get(path)
        now = time.perf_counter()
        if status == 200 and orjson.loads(body).get("event_counts", {}).get(PROBE_TYPE):
            return now - produced_at
        if now > deadline:
            return None
        young = now - produced_at < PROBE_FAST_POLL_FOR_SECONDS
        await asyncio.sleep(PROBE_FAST_POLL_SECONDS if young else PROBE_SLOW_POLL_SECONDS)


async def wait_until_scoring(bootstrap_servers: str, topic: str, api_port: int, probes: ProbeSource) -> float:
    """Produce probes until one is readable (the consumer has joined its group); returns seconds waited."""
    producer = kafka_producer(bootstrap_servers, linger_ms=PRODUCER_LINGER_MS)
    connection = await HttpConnection(LOOPBACK, api_port).open()
    started = time.perf_counter()
    try:
        for _ in range(30):  # ~2 s each: the broker's first group assignment takes ~5 s
            lead, value = probes.next()
            produced_at = time.perf_counter()
            _produce(producer, topic, lead.encode(), value)
            producer.poll(0)
            if await _readable_after(connection, lead, produced_at, give_up_after=2.0) is not None:
                return time.perf_counter() - started
        raise TimeoutError("the consumer scored no probe within 60 s; see consumer.log in the work directory")
    finally:
        producer.flush(5.0)
        await connection.close()


async def measure_window(
    bootstrap_servers: str,
    topic: str,
    api_port: int,
    background: Sequence[Message],
    plan: FreshnessPlan,
    probes: ProbeSource,
) -> dict[str, Any]:
    """One window: `plan.rate` background events/s for warm-up + window, probes during the window."""
    producer = kafka_producer(bootstrap_servers, linger_ms=PRODUCER_LINGER_MS)
    connections = [await HttpConnection(LOOPBACK, api_port).open() for _ in range(plan.max_in_flight)]
    idle = list(connections)
    latencies: list[float] = []
    timeouts = 0
    skipped = 0
    tasks: set[asyncio.Task[None]] = set()
    total = plan.warmup_seconds + plan.seconds
    needed = int(plan.rate * total)
    if needed > len(background):
        raise ValueError(f"the window needs {needed} background events; the workload has {len(background)}")

    async def probe() -> None:
        nonlocal timeouts
        connection = idle.pop()
        try:
            lead, value = probes.next()
            produced_at = time.perf_counter()
            _produce(producer, topic, lead.encode(), value)
            producer.poll(0)
            latency = await _readable_after(connection, lead, produced_at)
            if latency is None:
                timeouts += 1
            else:
                latencies.append(latency)
        finally:
            idle.append(connection)

    sent = 0
    started = time.perf_counter()
    probing_from = started + plan.warmup_seconds
    next_probe = probing_from
    try:
        while True:
            now = time.perf_counter()
            elapsed = now - started
            if elapsed >= total:
                break
            # Catch up to the schedule: at 5,000 events/s that is ~5 events per millisecond tick.
            due = min(int(elapsed * plan.rate), needed)
            while sent < due:
                key, value = background[sent]
                _produce(producer, topic, key, value)
                sent += 1
            producer.poll(0)
            if now >= next_probe:
                next_probe += plan.probe_interval
                if idle:
                    task = asyncio.create_task(probe())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:
                    skipped += 1
            await asyncio.sleep(0.001)
        produce_seconds = time.perf_counter() - started
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks), PROBE_TIMEOUT_SECONDS + 5)
    finally:
        producer.flush(10.0)
        for connection in connections:
            await connection.close()
    # A probe that never became readable counts as infinitely late: it lands in the tail percentiles.
    ordered = sorted(latencies + [math.inf] * timeouts)
    return {
        "background_rate": sent / produce_seconds,
        "background_events": sent,
        "probes": len(latencies),
        "probe_timeouts": timeouts,
        "probes_skipped_busy": skipped,
        "p50_ms": percentile(ordered, 50) * 1000,
        "p90_ms": percentile(ordered, 90) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "max_ms": ordered[-1] * 1000 if ordered else math.nan,
    }


def batch_totals(metrics_url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the consumer's batch histograms so far, by stage, and of its batch sizes ("events")."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("leadscore_batch_stage_seconds", "leadscore_batch_size"):
            continue
        for sample in family.samples:
            key = sample.labels.get("stage", "events")
            slot = totals.setdefault(key, [0.0, 0.0])
            if sample.name.endswith("_sum"):
                slot[0] = sample.value
            elif sample.name.endswith("_count"):
                slot[1] = sample.value
    return {key: (total, count) for key, (total, count) in totals.items()}


def per_batch(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Between two `batch_totals`: the mean events per batch and each stage's mean ms per batch."""
    means: dict[str, float] = {}
    for key, (total, count) in after.items():
        earlier_total, earlier_count = before.get(key, (0.0, 0.0))
        if count > earlier_count:
            mean = (total - earlier_total) / (count - earlier_count)
            means[key] = mean if key == "events" else mean * 1000
    return means
