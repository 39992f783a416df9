"""Running leadscore's own processes (`python -m app consume|serve`) against the benchmark's servers."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools.servers import LocalProcess, StackNames, free_port, leadscore_process, service_env

READY_TIMEOUT = 60.0


def bench_names(tag: str) -> StackNames:
    """Unique topic and group names, so a run never reads another run's events or offsets."""
    return StackNames.unique(f"bench-{tag}")


def bench_env(redis_url: str, bootstrap_servers: str, names: StackNames, partitions: int) -> dict[str, str]:
    """The environment of a service process: ours (LEADSCORE_* tuning included) pointed at the bench's servers.

    The in-process measurements read the same LEADSCORE_* variables through Settings, so a tuning knob set
    for a run applies to every measurement alike.
    """
    return service_env(
        os.environ,
        redis_url,
        bootstrap_servers,
        names,
        topic_partitions=str(partitions),
        fetch_max_wait_ms=str(bench_fetch_wait_ms()),
    )


def bench_fetch_wait_ms() -> int:
    """The consumer's fetch wait in every measurement (LEADSCORE_FETCH_MAX_WAIT_MS if set, else 10 ms).

    The local broker holds a fetch with no new data for the whole max wait, polling its storage at halves of it
    (Kafka answers as soon as data arrives): 10 ms keeps freshness measurable, and the bench's logs stay far
    below the size at which listing them takes that long (README, "The dev broker").
    """
    return int(os.environ.get("LEADSCORE_FETCH_MAX_WAIT_MS", "10"))


def start_api(env: dict[str, str], log_dir: Path, name: str = "api") -> tuple[LocalProcess, int]:
    """`leadscore serve` (one uvicorn worker) on a free port, once /readyz answers 200."""
    port = free_port()
    process = leadscore_process(name, ["serve", "--port", str(port)], env, log_dir)
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


def start_consumer(env: dict[str, str], log_dir: Path, name: str = "consumer", metrics_port: int = 0) -> LocalProcess:
    """`leadscore consume` (without a metrics port unless given one); readiness is seen by the caller's first scored
    event."""
    process = leadscore_process(name, ["consume", "--metrics-port", str(metrics_port)], env, log_dir)
    process.start()
    return process
