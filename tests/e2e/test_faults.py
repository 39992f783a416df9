"""Fault injection: random SIGKILLs, consumers joining, leaving and dying, Redis going away mid-stream.

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


def _readiness(metrics_port: int) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2).json()
    return document


def _consumed(metrics_port: int) -> float:
    return metric_total(f"http://127.0.0.1:{metrics_port}/metrics", "leadscore_events_consumed")


def test_consumers_join_leave_and_die_while_events_flow(
    redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    """Three processes share the group's partitions; while events keep coming one is killed, one leaves and a
    fresh one joins: every event is applied exactly once."""
    names = StackNames.unique(unique_name("group"))
    env = stack_env(redis_url, kafka_bootstrap, names, batch_max_records="100")
    events = synthetic_events(450, per_lead=60, seed=23)
    total = len(events)
    parts = [events[n * total // 5 : (n + 1) * total // 5] for n in range(5)]
    produced = 0

    def produce_next() -> None:
        nonlocal produced
        part = parts.pop(0)
        produce_events(kafka_bootstrap, names.events_topic, part)
        produced += len(part)

    def applied_all_produced() -> None:
        wait_until(lambda: _applied(redis_client) >= produced, timeout=120, message=f"{produced} events applied")

    produce_next()
    first, first_port = start_consumer(env, tmp_path, "consumer-a")
    processes = [first]
    try:
        wait_until(lambda: _applied(redis_client) > 0, timeout=60, message="first consumer working")
        second, second_port = start_consumer(env, tmp_path, "consumer-b")
        third, third_port = start_consumer(env, tmp_path, "consumer-c")
        processes += [second, third]
        wait_until(
            lambda: all(_readiness(port)["partitions"] for port in (first_port, second_port, third_port)),
            timeout=60,
            message="the three consumers share the partitions",
            ignore=(httpx.TransportError,),
        )
        produce_next()
        wait_until(
            lambda: all(_consumed(port) > 0 for port in (second_port, third_port)),
            timeout=60,
            message="the joined consumers applied events",
            ignore=(httpx.TransportError,),
        )
        second.kill()  # mid-batch, no goodbye: its partitions come back after the group's session timeout
        produce_next()
        applied_all_produced()
        assert third.stop() == 0, third.log_tail()  # leaves the group cleanly
        produce_next()
        fourth, fourth_port = start_consumer(env, tmp_path, "consumer-d")
        processes.append(fourth)
        wait_until(
            lambda: _readiness(fourth_port)["partitions"] != [],
            timeout=60,
            message="the new consumer assigned partitions",
            ignore=(httpx.TransportError,),
        )
        produce_next()
        applied_all_produced()
        assert produced == total and first.running and fourth.running
    finally:
        for process in processes:
            process.stop()
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
