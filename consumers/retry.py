"""Waiting, without losing work and without spinning: a batch's Redis work while Redis is down, a process's start
while the broker cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaConnectionError

from app import metrics
from app.storage.errors import STORE_UNAVAILABLE
from consumers.progress import ConsumerProgress, Phase

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_RETRY_DELAY_SECONDS = 10.0


async def until_redis_answers(attempt: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T | None:
    """Run `attempt`, retrying with capped exponential backoff (0.1 s ... 10 s) while Redis fails; None if the
    worker stops meanwhile. Logged on the first failure and every tenth."""
    delay = 0.1
    failures = 0
    while True:
        try:
            result = await attempt()
        except STORE_UNAVAILABLE as exc:
            failures += 1
            metrics.REDIS_ERRORS.labels("batch").inc()
            if failures == 1 or failures % 10 == 0:
                log.error("Redis unavailable (%s: %s); retry %d in %.1fs", type(exc).__name__, exc, failures, delay)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                return None
            except TimeoutError:
                delay = min(delay * 2, MAX_RETRY_DELAY_SECONDS)
            continue
        if failures:
            log.info("Redis is back after %d failed attempts", failures)
        return result


def _not_a_refused_connection(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Unable connect to")


async def until_broker_answers(
    attempt: Callable[[], Awaitable[T]],
    give_up_attempt: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    progress: ConsumerProgress,
    bootstrap_servers: str,
) -> T | None:
    """Run `attempt` (create topics, start clients), retrying with capped exponential backoff (0.5 s ... 10 s) while
    the broker cannot be reached; `give_up_attempt` stops what a failed attempt started (aiokafka clients are single
    use: every attempt makes new ones). None if the process stops first. Meanwhile the progress reports
    `waiting_for_broker` with the broker's error, and one warning is logged on the first failure and every tenth."""
    aiokafka_log = logging.getLogger("aiokafka")
    # aiokafka logs an error for every refused connection; while waiting, our one warning says it all.
    aiokafka_log.addFilter(_not_a_refused_connection)
    try:
        delay = 0.5
        failures = 0
        while not stop.is_set():
            try:
                result = await attempt()
            except KafkaConnectionError as exc:
                failures += 1
                await give_up_attempt()  # a half-started client must not leak its connections
                progress.phase = Phase.WAITING_FOR_BROKER
                progress.broker_error = str(exc)
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "waiting for Kafka at %s (%s); retrying every %.0f s or less: check that the broker runs "
                        "and LEADSCORE_KAFKA_BOOTSTRAP_SERVERS names it",
                        bootstrap_servers,
                        exc,
                        MAX_RETRY_DELAY_SECONDS,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_SECONDS)
                continue
            if failures:
                log.info("Kafka at %s answers after %d failed attempts", bootstrap_servers, failures)
            progress.broker_error = None
            return result
        return None
    finally:
        aiokafka_log.removeFilter(_not_a_refused_connection)
