"""The event loop every leadscore process runs on, and calls answered together once per turn of it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

import uvloop

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop: the Redis and Kafka clients spend about half the CPU per call there."""
    return uvloop.run(coroutine)


class PerTurn(Generic[K, V]):
    """Calls made during one event-loop turn, answered together by one call of `many` (keys in, one value per key
    out, in order): a cost paid per call, not per key (a Redis round trip, a numpy pass) is paid once per turn
    by all the requests that are ready together."""

    def __init__(self, many: Callable[[list[K]], Awaitable[Sequence[V]]]) -> None:
        self._many = many
        self._pending: list[tuple[K, asyncio.Future[V]]] = []
        self._answering: set[asyncio.Task[None]] = set()

    async def __call__(self, key: K) -> V:
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)
        future: asyncio.Future[V] = loop.create_future()
        self._pending.append((key, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        task = asyncio.ensure_future(self._answer(pending))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, pending: list[tuple[K, asyncio.Future[V]]]) -> None:
        try:
            values = await self._many([key for key, _ in pending])
        except BaseException as exc:  # every waiting caller gets the error (the API answers 503), none hangs
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), value in zip(pending, values, strict=True):
            if not future.done():
                future.set_result(value)
