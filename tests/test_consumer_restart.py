"""Restarting the consumer mid-stream (killed or stopped) loses no event and counts none twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from app.segments import SegmentRules
from app.settings import Settings
from app.store import segment_key
from models.state import LeadState, fold
from schemas.events import Event
from tests.stack import (
    StackNames,
    expected_counts,
    stack_env,
    start_consumer,
    stored_event_total,
    stored_records,
    synthetic_events,
)
from tests.support import produce_events, wait_until


def _assert_exact(client: redis.Redis, events: list[dict[str, object]], rules: SegmentRules) -> None:
    expected = expected_counts(events)
    records = stored_records(client)
    assert set(records) == set(expected)
    spec = Settings().service_config.features
    by_lead: dict[str, list[Event]] = {}
    for raw in events:
        by_lead.setdefault(str(raw["lead_id"]), []).append(Event.model_validate(raw))
    for lead_id, record in records.items():
        assert record.state.counts == dict(expected[lead_id]), lead_id
        clean = fold(LeadState(), by_lead[lead_id], spec)
        assert record.state.decayed == pytest.approx(clean.decayed, rel=1e-12), lead_id
        assert record.state.anchor_ms == clean.anchor_ms and record.state.active_days == clean.active_days
    # the segment index agrees with the records: each lead in exactly its own segment
    for name in rules.names:
        members = {m.decode() for m in client.zrange(segment_key(name), 0, -1)}
        assert members == {lead for lead, r in records.items() if r.segment == name}, name


def test_kill_and_restart_mid_stream_counts_every_event_once(
    redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, unique_name, tmp_path: Path
) -> None:
    names = StackNames.unique(unique_name("restart"))
    # Small batches so the stream is still being worked through when the consumer is killed.
    env = stack_env(redis_url, kafka_bootstrap, names, batch_max_records="100")
    events = synthetic_events(400, per_lead=60, seed=5)
    total = len(events)
    produce_events(kafka_bootstrap, names.events_topic, events[: total // 2])

    consumer, _ = start_consumer(env, tmp_path, "consumer-1")
    try:
        wait_until(lambda: stored_event_total(redis_client) > total // 10, timeout=60, message="first events applied")
    finally:
        consumer.kill()  # SIGKILL: no chance to finish the batch or commit
    applied_at_kill = stored_event_total(redis_client)
    assert 0 < applied_at_kill < total

    produce_events(kafka_bootstrap, names.events_topic, events[total // 2 :])
    consumer, _ = start_consumer(env, tmp_path, "consumer-2")
    try:
        wait_until(
            lambda: stored_event_total(redis_client) > applied_at_kill + total // 10,
            timeout=60,
            message="progress after restart",
        )
    finally:
        assert consumer.stop() == 0  # SIGTERM: finish the batch, commit, exit cleanly

    consumer, _ = start_consumer(env, tmp_path, "consumer-3")
    try:
        wait_until(lambda: stored_event_total(redis_client) >= total, timeout=90, message="all events applied")
        _assert_exact(redis_client, events, Settings().service_config.segments)
    finally:
        consumer.stop()
    assert stored_event_total(redis_client) == total
