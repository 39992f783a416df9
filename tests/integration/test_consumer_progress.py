"""A consumer that stops making progress says so: readiness, health, the stalled gauge, the lag."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from consumers.progress import ConsumerProgress, Phase
from consumers.status_server import StatusServer
from devtools.servers import LocalRedis, StackNames, free_port
from tests.support import (
    metric_sum,
    produce_events,
    stack_env,
    start_consumer,
    stored_event_total,
    synthetic_events,
    wait_until,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def consuming(clock: Clock, stall: float = 10.0, wedged: float = 5.0) -> ConsumerProgress:
    progress = ConsumerProgress(stall, wedged, clock=clock)
    progress.phase = Phase.CONSUMING
    return progress


def test_behind_and_committing_nothing_for_the_stall_time_is_stalled() -> None:
    clock = Clock()
    progress = consuming(clock)
    progress.observe_lag({0: 40, 1: 2})
    clock.now += 9.0
    progress.beat()
    assert not progress.stalled() and progress.readiness()[0]
    clock.now += 2.0
    progress.beat()
    assert progress.stalled()
    ready, body = progress.readiness()
    assert not ready
    assert body["status"] == "stalled" and body["lag"] == 42 and body["lag_by_partition"] == {"0": 40, "1": 2}
    assert body["seconds_without_progress"] == 11.0
    progress.committed()
    assert not progress.stalled() and progress.readiness()[0]


def test_caught_up_is_never_stalled_however_long_nothing_arrives() -> None:
    clock = Clock()
    progress = consuming(clock)
    for _ in range(10):
        clock.now += 30.0
        progress.beat()
        progress.observe_lag({0: 0, 1: 0})
    assert not progress.stalled()
    assert progress.readiness()[0]
    # new messages arrive: the clock for a stall starts then, not at the last commit long ago
    progress.observe_lag({0: 5})
    clock.now += 9.0
    assert not progress.stalled()
    clock.now += 2.0
    assert progress.stalled()


def test_not_ready_until_consuming_and_while_waiting_for_the_broker() -> None:
    clock = Clock()
    progress = ConsumerProgress(10.0, 5.0, clock=clock)
    assert progress.readiness()[1]["status"] == "starting"
    progress.phase = Phase.WAITING_FOR_BROKER
    progress.broker_error = "Unable to bootstrap"
    ready, body = progress.readiness()
    assert not ready and body["status"] == "waiting_for_broker" and body["broker_error"] == "Unable to bootstrap"
    assert progress.health()[0], "waiting for the broker is not a reason to restart the process"


def test_an_event_loop_that_stops_beating_is_unhealthy() -> None:
    clock = Clock()
    progress = consuming(clock, wedged=5.0)
    clock.now += 4.0
    assert progress.health()[0]
    clock.now += 2.0
    healthy, body = progress.health()
    assert not healthy and body["status"] == "wedged" and body["seconds_since_loop_ran"] == 6.0
    assert not progress.readiness()[0]
    progress.beat()
    assert progress.health()[0]


def test_a_blocked_event_loop_still_answers_its_checks_and_fails_health() -> None:
    """The status server runs in threads of its own: the loop it reports on being stuck must not silence it."""
    progress = ConsumerProgress(stall_seconds=60.0, wedged_seconds=0.5)
    progress.phase = Phase.CONSUMING
    loop = asyncio.new_event_loop()
    done = threading.Event()

    async def heartbeat() -> None:
        while not done.is_set():
            progress.beat()
            await asyncio.sleep(0.05)

    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    beating = asyncio.run_coroutine_threadsafe(heartbeat(), loop)
    server = StatusServer(progress, "127.0.0.1", free_port())
    health = f"http://127.0.0.1:{server.port}/healthz"
    try:
        wait_until(lambda: httpx.get(health, timeout=2).status_code == 200, timeout=5, message="healthy while beating")
        loop.call_soon_threadsafe(time.sleep, 2.0)  # something blocks the event loop
        wait_until(lambda: httpx.get(health, timeout=2).status_code == 503, timeout=5, message="wedged loop seen")
        assert httpx.get(health, timeout=2).json()["status"] == "wedged"
        wait_until(lambda: httpx.get(health, timeout=2).status_code == 200, timeout=5, message="healthy once unblocked")
        metrics = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=2)
        assert metrics.status_code == 200 and "# TYPE" in metrics.text
    finally:
        server.close()
        done.set()
        beating.result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(timeout=5)
        loop.close()


def test_a_consumer_stalled_by_a_redis_outage_reports_it_and_its_exact_lag(
    local_redis: LocalRedis, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    """Redis stops while events keep coming: nothing can be committed, so after LEADSCORE_STALL_SECONDS the
    consumer's readiness fails with the exact number of messages it is behind (produced in multi-record batches,
    whose high watermark the dev broker must report right), and recovers when Redis returns."""
    client = redis.Redis.from_url(local_redis.url)
    names = StackNames.unique(unique_name("stall"))
    env = stack_env(local_redis.url, kafka_bootstrap, names, stall_seconds="2", redis_timeout_seconds="0.5")
    events = synthetic_events(60, per_lead=8, seed=5)
    first, second = events[:200], events[200:]
    assert len(second) > 50
    consumer, port = start_consumer(env, tmp_path)
    base = f"http://127.0.0.1:{port}"

    def readiness() -> tuple[int, dict[str, Any]]:
        response = httpx.get(f"{base}/readyz", timeout=2)
        return response.status_code, response.json()

    def caught_up(applied: int) -> bool:
        status, body = readiness()
        return status == 200 and body["lag"] == 0 and stored_event_total(client) == applied

    try:
        produce_events(kafka_bootstrap, names.events_topic, first)
        wait_until(
            lambda: caught_up(len(first)),
            timeout=90,
            message="first events applied and committed",
            ignore=(httpx.TransportError, redis.ConnectionError),
        )
        local_redis.stop()
        produce_events(kafka_bootstrap, names.events_topic, second)
        wait_until(
            lambda: readiness()[0] == 503 and readiness()[1]["status"] == "stalled",
            timeout=60,
            message="consumer reports the stall",
            ignore=(httpx.TransportError,),
        )
        _, body = readiness()
        assert body["lag"] == len(second), body
        wait_until(
            lambda: metric_sum(f"{base}/metrics", "leadscore_consumer_stalled") == 1,
            timeout=5,
            message="the stalled gauge follows readiness within its second",
        )
        assert metric_sum(f"{base}/metrics", "leadscore_consumer_lag") == len(second)
        assert httpx.get(f"{base}/healthz", timeout=2).status_code == 200, "stalled is not wedged"
        assert consumer.running
        local_redis.start()
        wait_until(
            lambda: caught_up(len(events)),
            timeout=90,
            message="consumer ready again after Redis returned, every event applied",
            ignore=(httpx.TransportError, redis.ConnectionError),
        )
        wait_until(
            lambda: metric_sum(f"{base}/metrics", "leadscore_consumer_stalled") == 0,
            timeout=5,
            message="stalled gauge cleared",
        )
    finally:
        consumer.stop()
        client.close()
