"""`leadscore dev`: the whole stack on one machine, for trying leadscore out.

A local redis-server and Kafka-protocol broker on free loopback ports, one consumer worker, the API
and the simulator feeding live events, each a child process logging to the work directory. The stack's
settings are written to an env file that other `leadscore` commands can `source`. Ctrl-C (or any child
dying) stops everything, children first, then the servers.

The dev broker (Tansu with in-memory storage) keeps every record batch it receives as an object and lists
all of a partition's objects on every fetch, within the fetch's max wait: a log of many small batches
makes each fetch slower until none returns any record. So the simulator gathers events into one record
batch per partition every `linger_ms`, and the consumer's fetch wait leaves room for the listing (the
README's "The dev broker" has the measurements).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from app.ports import ensure_port_free
from devtools.servers import (
    LocalProcess,
    StackNames,
    free_port,
    leadscore_process,
    service_env,
    start_broker,
    start_redis,
)

_READY_TIMEOUT_SECONDS = 120.0
_WATCH_INTERVAL_SECONDS = 0.5
_PROGRESS_CHECK_SECONDS = 10.0


@dataclass(frozen=True)
class DevOptions:
    api_port: int = 8000
    rate: float = 50.0
    leads: int = 500
    workdir: Path | None = None
    env_file: Path = Path(".leadscore/dev.env")
    linger_ms: float = 1000.0
    fetch_max_wait_ms: int = 100


def _wait_ready(url: str, process: LocalProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running:
            raise RuntimeError(f"{process.name} exited during start-up; its log:\n{process.log_tail()}")
        if _get_json(url)[0] == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready within {timeout:.0f}s; see {process.log_path}")


def _get_json(url: str) -> tuple[int, dict[str, object]]:
    """(status, body) of a GET, (0, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            return error.code, orjson.loads(error.read())
        except orjson.JSONDecodeError:
            return error.code, {}
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError):
        return 0, {}


def write_env_file(path: Path, settings: dict[str, str], comment: str) -> None:
    """`export NAME=value` lines a shell can `source` (values are loopback URLs and names: nothing to quote)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"export {name}={value}" for name, value in sorted(settings.items())]
    path.write_text("\n".join(lines) + "\n")


def run_dev_stack(options: DevOptions) -> int:
    # Before anything starts: a taken API port is one line, not a stack that comes up and dies.
    ensure_port_free("127.0.0.1", options.api_port, what="the dev stack's API", option="--port")
    with ExitStack() as stack:
        workdir = options.workdir
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="leadscore-dev-")))
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"leadscore dev: logs in {workdir}", flush=True)
        redis = stack.enter_context(start_redis(workdir=workdir))
        broker = stack.enter_context(start_broker(workdir=workdir))
        metrics_port = free_port()
        env = service_env(
            os.environ,
            redis.url,
            broker.bootstrap_servers,
            StackNames(),
            fetch_max_wait_ms=str(options.fetch_max_wait_ms),
        )
        simulate = [
            "simulate",
            "--kafka",
            "--rate",
            str(options.rate),
            "--leads",
            str(options.leads),
            "--linger-ms",
            str(options.linger_ms),
        ]
        children = [
            leadscore_process("consumer", ["consume", "--metrics-port", str(metrics_port)], env, workdir),
            leadscore_process("api", ["serve", "--port", str(options.api_port)], env, workdir),
            leadscore_process("simulator", simulate, env, workdir),
        ]
        for child in children:
            stack.enter_context(child)
        api = f"http://127.0.0.1:{options.api_port}"
        consumer_status = f"http://127.0.0.1:{metrics_port}"
        _wait_ready(f"{api}/readyz", children[1], _READY_TIMEOUT_SECONDS)
        _wait_ready(f"{consumer_status}/readyz", children[0], _READY_TIMEOUT_SECONDS)
        stack_settings = {name: value for name, value in env.items() if name.startswith("LEADSCORE_")}
        write_env_file(
            options.env_file,
            stack_settings | {"LEADSCORE_DEV_API": api, "LEADSCORE_DEV_CONSUMER_STATUS": consumer_status},
            f"The settings of the `leadscore dev` stack started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
            f" (pid {os.getpid()}); removed when it stops.\n"
            "Use them from another shell: source .venv/bin/activate && source " + str(options.env_file),
        )
        stack.callback(options.env_file.unlink, missing_ok=True)
        print(
            f"\nleadscore is running\n"
            f"  page         {api}/ui  (live segments, lead lookup, reasons, the model)\n"
            f"  API          {api}  (docs: {api}/docs)\n"
            f"  segments     {api}/segments\n"
            f"  hot leads    {api}/segments/hot/leads  (then {api}/leads/<lead_id>)\n"
            f"  API metrics  {api}/metrics\n"
            f"  consumer     {consumer_status}/metrics  (and /readyz, /healthz)\n"
            f"  Redis        {redis.url}\n"
            f"  Kafka        {broker.bootstrap_servers}  (topic lead-events)\n"
            f"  simulator    {options.rate:g} events/s over {options.leads} leads\n"
            f"The stack's settings are in {options.env_file}: in another shell,\n"
            f"  source .venv/bin/activate && source {options.env_file}\n"
            f"then any leadscore command uses this stack (e.g. `leadscore lead <lead_id>`, `leadscore models list`).\n"
            f"Ctrl-C stops everything.",
            flush=True,
        )
        try:
            _watch(children, f"{consumer_status}/readyz")
        except KeyboardInterrupt:
            print("\nstopping…", flush=True)
            return 0
        return 1


def _watch(children: list[LocalProcess], consumer_readiness: str) -> None:
    """Return when a child exits (after saying so); say when the consumer stops making progress, and when it
    makes progress again."""
    next_check = time.monotonic() + _PROGRESS_CHECK_SECONDS
    stalled = False
    while True:
        for child in children:
            if not child.running:
                print(f"{child.name} exited ({child.returncode}); its log:\n{child.log_tail()}", file=sys.stderr)
                return
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + _PROGRESS_CHECK_SECONDS
            status, body = _get_json(consumer_readiness)
            if status != 200 and not stalled:
                stalled = True
                print(f"warning: the consumer is not ready: {orjson.dumps(body).decode()}", file=sys.stderr)
            elif status == 200 and stalled:
                stalled = False
                print("the consumer is making progress again", file=sys.stderr)
        time.sleep(_WATCH_INTERVAL_SECONDS)
