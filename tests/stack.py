"""Running leadscore's own processes (consumer, API) against the session's Redis and broker in tests."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app.localstack import LocalProcess, StackNames, free_port, leadscore_process, service_env
from app.records import LeadRecord, RecordCodec, RecordLayout, UnknownRecordLayout, default_codec
from app.settings import Settings
from app.store import LEAD_KEY_PREFIX, layout_key, segment_key
from models.state import LeadState, fold
from schemas.events import Event
from tests.support import wait_until

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


def decode_stored(client: redis.Redis, lead_id: str, raw: bytes) -> LeadRecord:
    """A stored value decoded as the service's store does: with the layout it names, read from Redis if new."""
    try:
        return _CODEC.decode(lead_id, raw)
    except UnknownRecordLayout as unknown:
        names = client.get(layout_key(unknown.fingerprint))
        if names is None:
            raise
        _CODEC.add_layout(RecordLayout.from_json(names))
        return _CODEC.decode(lead_id, raw)


def stored_records(client: redis.Redis) -> dict[str, LeadRecord]:
    keys = list(client.scan_iter(match=f"{LEAD_KEY_PREFIX}{{*}}", count=1000))
    records = {}
    for key, raw in zip(keys, client.mget(keys) if keys else [], strict=True):
        lead_id = key.decode()[len(LEAD_KEY_PREFIX) + 1 : -1]
        records[lead_id] = decode_stored(client, lead_id, raw)
    return records


def stored_event_total(client: redis.Redis) -> int:
    return sum(record.state.event_count for record in stored_records(client).values())


def assert_matches_clean_replay(client: redis.Redis, events: list[dict[str, Any]]) -> None:
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
            members = {m.decode() for m in client.zrange(segment_key(segment_set, name), 0, -1)}
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
