"""Fault injection: random SIGKILLs, a consumer joining and leaving, Redis going away mid-stream.

After each, Redis must hold exactly what one clean pass over the events gives.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import redis

from devtools.servers import LocalRedis
from tests.support import (
    StackNames,
    assert_matches_clean_replay,
    metric_total,
    produce_events,
    stack_env,
    start_consumer,
    stored_event_total,
    synthetic_events,
    wait_until,
)


def _applied(client: redis.Redis) -> int:
    return stored_event_total(client)


def test_repeated_sigkill_at_random_points(
    redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    names = StackNames.unique(unique_name("kills"))
    env = stack_env(redis_url, kafka_bootstrap, names, batch_max_records="250")
    events = synthetic_events(600, per_lead=70, seed=17)
    total = len(events)
    assert total > 20_000
    produce_events(kafka_bootstrap, names.events_topic, events)
    rng = random.Random(17)
    kill_points = sorted(rng.uniform(0.05, 0.85) for _ in range(3))
    for round_number, fraction in enumerate(kill_points):
        consumer, _ = start_consumer(env, tmp_path, f"consumer-{round_number}")
        try:
            wait_until(lambda f=fraction: _applied(redis_client) >= f * total, timeout=90, message=f"{fraction:.0%}")
        finally:
            consumer.kill()
    consumer, _ = start_consumer(env, tmp_path, "consumer-final")
    try:
        wait_until(lambda: _applied(redis_client) >= total, timeout=120, message="all events applied")
    finally:
        consumer.stop()
    assert_matches_clean_replay(redis_client, events)


def test_a_second_consumer_joins_and_leaves_mid_stream(
    redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    names = StackNames.unique(unique_name("rebalance"))
    env = stack_env(redis_url, kafka_bootstrap, names, batch_max_records="100")
    events = synthetic_events(400, per_lead=60, seed=23)
    total = len(events)
    # three parts: before the second consumer joins, while both run, after it left
    parts = [events[: total // 3], events[total // 3 : 2 * total // 3], events[2 * total // 3 :]]
    produce_events(kafka_bootstrap, names.events_topic, parts[0])
    first, _ = start_consumer(env, tmp_path, "consumer-a")
    try:
        wait_until(lambda: _applied(redis_client) > total // 20, timeout=60, message="first consumer working")
        second, second_metrics = start_consumer(env, tmp_path, "consumer-b")
        try:
            wait_until(
                lambda: httpx.get(f"http://127.0.0.1:{second_metrics}/readyz", timeout=2).json()["partitions"] != [],
                timeout=60,
                message="second consumer assigned partitions",
                ignore=(httpx.TransportError,),
            )
            produce_events(kafka_bootstrap, names.events_topic, parts[1])
            wait_until(
                lambda: metric_total(f"http://127.0.0.1:{second_metrics}/metrics", "leadscore_events_consumed") > 0,
                timeout=60,
                message="second consumer applied events",
                ignore=(httpx.TransportError,),
            )
        finally:
            exit_status = second.stop()  # leaves the group; its partitions go back to the first
        assert exit_status == 0, second.log_tail()
        produce_events(kafka_bootstrap, names.events_topic, parts[2])
        wait_until(lambda: _applied(redis_client) >= total, timeout=120, message="all events applied")
        assert first.running
    finally:
        first.stop()
    assert_matches_clean_replay(redis_client, events)


def test_redis_outage_mid_stream_loses_nothing(
    local_redis: LocalRedis, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(local_redis.url)
    names = StackNames.unique(unique_name("redis-outage"))
    env = stack_env(local_redis.url, kafka_bootstrap, names, batch_max_records="100", redis_timeout_seconds="0.5")
    events = synthetic_events(300, per_lead=40, seed=29)
    total = len(events)
    produce_events(kafka_bootstrap, names.events_topic, events[: total // 2])
    consumer, metrics_port = start_consumer(env, tmp_path)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_until(lambda: _applied(client) > total // 20, timeout=60, message="consumer working")
        local_redis.stop()
        produce_events(kafka_bootstrap, names.events_topic, events[total // 2 :])
        wait_until(
            lambda: metric_total(metrics_url, "leadscore_redis_errors") >= 2,
            timeout=30,
            message="consumer retrying while Redis is down",
            ignore=(httpx.TransportError,),
        )
        assert consumer.running, consumer.log_tail()
        local_redis.start()
        wait_until(lambda: _applied(client) >= total, timeout=120, message="all events applied after Redis returned")
        assert consumer.running
    finally:
        consumer.stop()
        client.close()
    assert "Redis unavailable" in consumer.log_tail(200)
    assert_matches_clean_replay(redis.Redis.from_url(local_redis.url), events)
