"""Running leadscore's own processes (`python -m app consume|serve`) against the benchmark's servers."""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from app.localstack import LocalProcess, free_port

READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class StackNames:
    """Unique topic and group names, so a run never reads another run's events or offsets."""

    events_topic: str
    dlq_topic: str
    changes_topic: str
    group: str

    @classmethod
    def unique(cls, tag: str) -> StackNames:
        return cls(f"bench-events-{tag}", f"bench-dlq-{tag}", f"bench-changes-{tag}", f"bench-group-{tag}")


def service_env(redis_url: str, bootstrap_servers: str, names: StackNames, partitions: int) -> dict[str, str]:
    """The environment of a service process: ours (LEADSCORE_* tuning included) pointed at the bench's servers.

    The in-process measurements read the same LEADSCORE_* variables through Settings, so a tuning knob set
    for a run applies to every measurement alike.
    """
    env = dict(os.environ)
    env.update(
        LEADSCORE_REDIS_URL=redis_url,
        LEADSCORE_KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers,
        LEADSCORE_EVENTS_TOPIC=names.events_topic,
        LEADSCORE_DLQ_TOPIC=names.dlq_topic,
        LEADSCORE_SEGMENT_CHANGES_TOPIC=names.changes_topic,
        LEADSCORE_CONSUMER_GROUP=names.group,
        LEADSCORE_TOPIC_PARTITIONS=str(partitions),
    )
    return env


def _leadscore(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> LocalProcess:
    return LocalProcess(name, [sys.executable, "-m", "app", *args], log_path=log_dir / f"{name}.log", env=env)


def start_api(env: dict[str, str], log_dir: Path, name: str = "api") -> tuple[LocalProcess, int]:
    """`leadscore serve` (one uvicorn worker) on a free port, once /readyz answers 200."""
    port = free_port()
    process = _leadscore(name, ["serve", "--port", str(port)], env, log_dir)
    process.start()
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if not process.running:
            raise RuntimeError(f"{name} exited during start-up:\n{process.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1.0) as response:
                if response.status == 200:
                    return process, port
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            process.stop()
            raise RuntimeError(f"{name} was not ready within {READY_TIMEOUT:.0f}s; log {process.log_path}")
        time.sleep(0.1)


def start_consumer(env: dict[str, str], log_dir: Path, name: str = "consumer") -> LocalProcess:
    """`leadscore consume` without a metrics port; readiness is seen by the caller's first scored event."""
    process = _leadscore(name, ["consume", "--metrics-port", "0"], env, log_dir)
    process.start()
    return process
