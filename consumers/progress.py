"""Is the consumer making progress? What its health and readiness checks answer, and when it says it is stalled.

The worker records what happens (loop turns, commits, lag, its phase); the checks are judged from those
records and the clock at the moment they are asked, from the status server's own thread. So a consumer
whose event loop is blocked still answers, and fails its health check, instead of not answering at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    STARTING = "starting"
    WAITING_FOR_BROKER = "waiting_for_broker"
    CONSUMING = "consuming"
    STOPPING = "stopping"


@dataclass
class ConsumerProgress:
    """What the worker did last, in monotonic seconds. Written by the worker's event loop, read by the status
    server's thread: every field is replaced whole, so a reader sees either the old or the new value."""

    stall_seconds: float
    wedged_seconds: float
    clock: Callable[[], float] = time.monotonic
    phase: Phase = Phase.STARTING
    model_version: str | None = None
    lag: Mapping[int, int] = field(default_factory=dict)  # partition -> messages not yet committed
    partitions: frozenset[int] = frozenset()  # the partitions this consumer owns
    heartbeat_at: float = 0.0  # the event loop last ran the heartbeat
    progress_at: float = 0.0  # last commit, or last moment without lag
    committed_batches: int = 0
    broker_error: str | None = None

    def __post_init__(self) -> None:
        now = self.clock()
        self.heartbeat_at = self.progress_at = now

    def beat(self) -> None:
        self.heartbeat_at = self.clock()

    def committed(self) -> None:
        self.committed_batches += 1
        self.progress_at = self.clock()

    def observe_lag(self, lag: Mapping[int, int]) -> None:
        self.lag = dict(lag)
        if not any(lag.values()):
            self.progress_at = self.clock()  # caught up: nothing to make progress on

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())

    def seconds_without_progress(self) -> float:
        return self.clock() - self.progress_at

    def stalled(self) -> bool:
        """Behind, and nothing committed for `stall_seconds`."""
        return self.total_lag > 0 and self.seconds_without_progress() > self.stall_seconds

    def wedged(self) -> bool:
        """The event loop has not run the heartbeat for `wedged_seconds`: something blocks it."""
        return self.clock() - self.heartbeat_at > self.wedged_seconds

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive: the event loop runs (a wedged consumer should be restarted)."""
        since_beat = self.clock() - self.heartbeat_at
        ok = not self.wedged()
        return ok, {"status": "ok" if ok else "wedged", "seconds_since_loop_ran": round(since_beat, 3)}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: consuming and not stalled (waiting for the broker, starting or stalled are not ready)."""
        stalled = self.stalled()
        ok = self.phase is Phase.CONSUMING and not stalled and not self.wedged()
        if stalled:
            status = "stalled"
        elif self.phase is not Phase.CONSUMING:
            status = self.phase.value
        else:
            status = "ready" if ok else "wedged"
        body: dict[str, Any] = {
            "status": status,
            "phase": self.phase.value,
            "model_version": self.model_version,
            "lag": self.total_lag,
            "lag_by_partition": {str(p): n for p, n in sorted(self.lag.items())},
            "partitions": sorted(self.partitions),
            "seconds_without_progress": round(self.seconds_without_progress(), 3),
            "stall_seconds": self.stall_seconds,
            "committed_batches": self.committed_batches,
        }
        if self.broker_error is not None:
            body["broker_error"] = self.broker_error
        return ok, body
