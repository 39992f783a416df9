"""Open-loop HTTP load at a fixed rate (what wrk cannot do), with latency taken from the scheduled send time.

`python -m bench.loadgen --port P --leads-file F --rate R --seconds S [--connections C]` prints one JSON
object. Request i is due at start + i/R whether or not earlier ones have been answered; its latency runs
from that due time to the end of the response, so a stalled server shows up in the tail instead of
silently lowering the rate (the coordinated-omission correction wrk2 makes). Connections are bounded: when
all are busy, due requests wait, and that wait counts. `--rate 0` runs closed-loop at full speed (the
fallback when wrk is not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.httpclient import HttpConnection
from bench.stats import percentile

LOOPBACK = "127.0.0.1"


async def generate_load(
    port: int, paths: list[str], *, rate: float, seconds: float, connections: int, seed: int = 1
) -> dict[str, Any]:
    rng = random.Random(seed)
    pool = [await HttpConnection(LOOPBACK, port).open() for _ in range(connections)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    next_index = 0
    started = time.perf_counter()
    ends = started + seconds

    async def drive(connection: HttpConnection) -> None:
        nonlocal next_index, errors
        while True:
            index = next_index
            next_index += 1
            due = started + index / rate if rate > 0 else time.perf_counter()
            if due >= ends:
                return
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                status, _ = await connection.get(paths[rng.randrange(len(paths))])
            except (OSError, asyncio.IncompleteReadError, RuntimeError):
                errors += 1
                continue
            latencies.append(time.perf_counter() - due)
            statuses[status] = statuses.get(status, 0) + 1

    # The drivers stop on their own once the schedule passes `seconds`; the timeout is a backstop.
    await asyncio.wait_for(asyncio.gather(*(drive(c) for c in pool)), timeout=seconds + 30)
    elapsed = time.perf_counter() - started
    for connection in pool:
        await connection.close()
    ordered = sorted(latencies)
    return {
        "target_rate": rate,
        "achieved_rate": len(latencies) / elapsed,
        "requests": len(latencies),
        "errors": errors,
        "statuses": {str(k): v for k, v in statuses.items()},
        "connections": connections,
        "seconds": elapsed,
        "p50_ms": percentile(ordered, 50) * 1000,
        "p90_ms": percentile(ordered, 90) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "p999_ms": percentile(ordered, 99.9) * 1000,
        "max_ms": (ordered[-1] if ordered else float("nan")) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="API port on 127.0.0.1")
    parser.add_argument("--leads-file", type=Path, help="lead ids, one a line: GET /leads/<random one>")
    parser.add_argument("--path", default="/healthz", help="the path to GET when no --leads-file is given")
    parser.add_argument("--rate", type=float, required=True, help="requests/s (0 = as fast as possible)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--reasons", action="store_true", help="GET /leads/<id> with reason codes (default: without)")
    args = parser.parse_args(argv)
    if args.leads_file is not None:
        query = "" if args.reasons else "?reasons=false"
        paths = [f"/leads/{line}{query}" for line in args.leads_file.read_text().split()]
    else:
        paths = [args.path]
    load = generate_load(args.port, paths, rate=args.rate, seconds=args.seconds, connections=args.connections)
    try:
        import uvloop  # ships with uvicorn[standard]; cheaper per request than the default loop
    except ImportError:
        result = asyncio.run(load)
    else:
        result = uvloop.run(load)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
