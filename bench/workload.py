"""The benchmark's events: ~200-byte simulator-shaped events over a fixed set of leads, and producing them.

The simulator itself makes ~20k events/s and spreads a short stream over few leads (leads are created
over time), so the benchmark draws event shapes (type + properties) from a simulator sample and deals them
out uniformly over `leads` lead ids. Every lead's first event is its `profile_update`, as in the simulator.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from confluent_kafka import KafkaException, Producer

from devtools.simulator import PROFILE_UPDATE, SimulationSpec, rfc3339_ms, simulate_history

# Enough simulator events to carry its type and property mix (unknown types included).
_TEMPLATE_SAMPLE = 40_000
_TEMPLATE_LEADS = 4_000
# The backlog's event times span this window ending at generation time (decay and recency features
# then see plausible ages, not identical timestamps).
_EVENT_WINDOW_MS = 2 * 86_400_000


# (key, value): a plain tuple of bytes, which the garbage collector stops tracking, so a large backlog
# held by the benchmark does not slow down the collections of the code it measures.
Message = tuple[bytes, bytes]


@dataclass(frozen=True)
class Workload:
    messages: list[Message]  # the backlog
    lead_ids: list[str]  # every lead with an event in the backlog, in first-seen order
    counts: dict[str, Counter[str]]  # the backlog's events per lead by type: what a correct pipeline stores
    mean_bytes: float

    @property
    def size(self) -> int:
        return len(self.messages)


def lead_id(index: int) -> str:
    return f"L-{index:06d}"


def _templates(seed: int) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]]]:
    """(profile property sets, (type, properties) of every other event) from a simulator history."""
    sample = itertools.islice(simulate_history(SimulationSpec(leads=_TEMPLATE_LEADS, seed=seed)), _TEMPLATE_SAMPLE)
    profiles: list[dict[str, Any]] = []
    activity: list[tuple[str, dict[str, Any]]] = []
    for event in sample:
        if event["type"] == PROFILE_UPDATE:
            profiles.append(event["properties"])
        else:
            activity.append((event["type"], event["properties"]))
    return profiles, activity


def generate(
    total: int,
    leads: int,
    *,
    seed: int,
    end_ms: int | None = None,
    window_ms: int = _EVENT_WINDOW_MS,
    out_of_order: bool = False,
) -> Workload:
    """`total` events over lead ids L-000001..L-<leads>, uniformly, their times spread over `window_ms` up to
    `end_ms`: increasing with the event's place in the stream, or with `out_of_order` shuffled (a lead's events
    arrive in any time order, as from several producers with clock skew and retries)."""
    rng = np.random.default_rng(seed)
    profiles, activity = _templates(seed)
    # Draw everything random up front: per-event Python RNG calls would dominate generation time.
    lead_draws = rng.integers(1, leads + 1, size=total).tolist()
    activity_draws = rng.integers(0, len(activity), size=total).tolist()
    profile_draws = rng.integers(0, len(profiles), size=total).tolist()
    slots = (rng.permutation(total) if out_of_order else np.arange(total)).tolist()
    end_ms = end_ms if end_ms is not None else time.time_ns() // 1_000_000
    start_ms = end_ms - window_ms
    step = window_ms / max(total, 1)
    sequence: dict[str, int] = {}
    counts: dict[str, Counter[str]] = {}
    messages: list[Message] = []
    size = 0
    for n in range(total):
        lead = lead_id(lead_draws[n])
        seen = sequence.get(lead, 0)
        sequence[lead] = seen + 1
        if seen == 0:
            event_type, properties = PROFILE_UPDATE, profiles[profile_draws[n]]
        else:
            event_type, properties = activity[activity_draws[n]]
        value = orjson.dumps(
            {
                "event_id": f"b{seed}-{lead}-{seen + 1}",
                "lead_id": lead,
                "type": event_type,
                "ts": rfc3339_ms(start_ms + int(slots[n] * step)),
                "properties": properties,
            }
        )
        size += len(value)
        messages.append((lead.encode(), value))
        lead_counts = counts.get(lead)
        if lead_counts is None:
            lead_counts = counts[lead] = Counter()
        lead_counts[event_type] += 1
    return Workload(messages, list(counts), counts, size / max(total, 1))


def kafka_producer(bootstrap_servers: str, *, linger_ms: float) -> Producer:
    """librdkafka producer keyed like aiokafka (murmur2), so a lead lands on the partition the service expects."""
    return Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": False,  # the local broker lacks it
            "acks": "all",
            "linger.ms": linger_ms,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 500_000,
            "client.id": "leadscore-bench",
        }
    )


def produce_all(bootstrap_servers: str, topic: str, messages: Sequence[Message], *, timeout: float = 180.0) -> float:
    """Produce every message and wait for all acknowledgements; returns the events/s it took."""
    producer = kafka_producer(bootstrap_servers, linger_ms=20)
    failures: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    started = time.perf_counter()
    deadline = started + timeout
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:
                # Local queue full: let librdkafka drain it (bounded by the deadline).
                producer.poll(0.01)
                if time.perf_counter() > deadline:
                    raise TimeoutError(
                        f"producing {len(messages)} events to {topic} took over {timeout:.0f}s"
                    ) from None
        producer.poll(0)
    remaining = producer.flush(max(deadline - time.perf_counter(), 1.0))
    if remaining or failures:
        raise KafkaException(f"{remaining} events unacknowledged, {len(failures)} failed: {failures[:3]}")
    return len(messages) / (time.perf_counter() - started)


def expected_total(counts: Iterable[Counter[str]]) -> int:
    return sum(sum(c.values()) for c in counts)
