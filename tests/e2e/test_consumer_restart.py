"""Restarting the consumer mid-stream (killed or stopped) loses no event and counts none twice."""

from __future__ import annotations

from pathlib import Path

import redis

from tests.support import (
    StackNames,
    assert_matches_clean_replay,
    produce_events,
    stack_env,
    start_consumer,
    stored_event_total,
    synthetic_events,
    wait_until,
)


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
        assert_matches_clean_replay(redis_client, events)
    finally:
        consumer.stop()
    assert stored_event_total(redis_client) == total
