"""`leadscore dev`: the whole stack on one machine, for trying leadscore out.

A local redis-server and Kafka-protocol broker on free loopback ports, one consumer worker, the API
and the simulator feeding live events, each a child process logging to the work directory.
Ctrl-C (or any child dying) stops everything, children first, then the servers.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from app.localstack import (
    LocalProcess,
    StackNames,
    free_port,
    leadscore_process,
    service_env,
    start_broker,
    start_redis,
)

_READY_TIMEOUT_SECONDS = 60.0
_WATCH_INTERVAL_SECONDS = 0.5


def _wait_ready(url: str, process: LocalProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running:
            raise RuntimeError(f"{process.name} exited during start-up; its log:\n{process.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready within {timeout:.0f}s; see {process.log_path}")


def run_dev_stack(*, api_port: int, rate: float, leads: int, workdir: Path | None) -> int:
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="leadscore-dev-")))
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"leadscore dev: logs in {workdir}", flush=True)
        redis = stack.enter_context(start_redis(workdir=workdir))
        broker = stack.enter_context(start_broker(workdir=workdir))
        metrics_port = free_port()
        env = service_env(os.environ, redis.url, broker.bootstrap_servers, StackNames())
        simulate = ["simulate", "--kafka", "--rate", str(rate), "--leads", str(leads)]
        children = [
            leadscore_process("consumer", ["consume", "--metrics-port", str(metrics_port)], env, workdir),
            leadscore_process("api", ["serve", "--port", str(api_port)], env, workdir),
            leadscore_process("simulator", simulate, env, workdir),
        ]
        for child in children:
            stack.enter_context(child)
        api = f"http://127.0.0.1:{api_port}"
        _wait_ready(f"{api}/readyz", children[1], _READY_TIMEOUT_SECONDS)
        print(
            f"\nleadscore is running\n"
            f"  API          {api}  (docs: {api}/docs)\n"
            f"  segments     {api}/segments\n"
            f"  hot leads    {api}/segments/hot/leads  (then {api}/leads/<lead_id>)\n"
            f"  API metrics  {api}/metrics\n"
            f"  consumer     http://127.0.0.1:{metrics_port}/metrics\n"
            f"  Redis        {redis.url}  (inspect a lead: LEADSCORE_REDIS_URL={redis.url} leadscore lead <id>)\n"
            f"  Kafka        {broker.bootstrap_servers}  (topic lead-events)\n"
            f"  simulator    {rate:g} events/s over {leads} leads\n"
            f"Ctrl-C stops everything.",
            flush=True,
        )
        try:
            while True:
                for child in children:
                    if not child.running:
                        print(
                            f"{child.name} exited ({child.returncode}); its log:\n{child.log_tail()}", file=sys.stderr
                        )
                        return 1
                time.sleep(_WATCH_INTERVAL_SECONDS)
        except KeyboardInterrupt:
            print("\nstopping…", flush=True)
    return 0
