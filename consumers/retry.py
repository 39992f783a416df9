"""Retrying a batch's Redis work while Redis is down, without losing it and without spinning."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app import metrics
from app.storage.errors import STORE_UNAVAILABLE

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
