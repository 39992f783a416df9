"""`python -m bench.dev_broker`: why the local dev broker (Tansu, in-memory) slows down as its log grows, measured.

(a) Fetch cost against the number of record batches a partition holds: Tansu keeps each produced record batch
    as an object and lists all of a partition's objects on every fetch, within the fetch's max wait; past some
    count, a fetch with a short max wait returns nothing at all.
(b) How many record batches the dev simulator's producer leaves per partition per minute, at `leadscore dev`'s
    rates, with a 5 ms linger (the old default) and with 1,000 ms (the dev default now).

Writes bench/results/dev-broker.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from confluent_kafka import Producer

from bench.report import now_iso
from consumers.producer import EventProducer
from consumers.topics import ensure_topics
from devtools.servers import start_broker
from devtools.simulator import SimulationSpec, live_events

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 6


async def _fetch(
    client: AIOKafkaClient, topic: str, partition: int, offset: int, max_wait_ms: int
) -> tuple[float, bytes]:
    """Seconds one Fetch of (topic, partition) from `offset` took, and its record bytes."""
    node = next(iter(client.cluster.brokers())).nodeId
    request = FetchRequest(max_wait_ms, 1, 5 * 1024 * 1024, 0, [(topic, [(partition, offset, 5 * 1024 * 1024)])])
    started = time.perf_counter()
    response = await client.send(node, request)
    seconds = time.perf_counter() - started
    records: bytes = response.topics[0][1][0][-1] or b""
    return seconds, records


async def fetch_cost(bootstrap: str, sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Fetch of a partition's last record, by how many single-record batches the partition holds."""
    topic = "fetch-cost"
    await ensure_topics(bootstrap, [topic], 1, 1)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 1})
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    rows = []
    stored = 0
    try:
        for size in sizes:
            while stored < size:
                producer.produce(topic, key=b"k", value=b"x" * 200, partition=0)
                stored += 1
                if stored % 1000 == 0:
                    producer.poll(0)
            producer.flush()
            timings = [(await _fetch(client, topic, 0, stored - 1, 5000))[0] for _ in range(repeats)]
            short = [len((await _fetch(client, topic, 0, stored - 1, wait))[1]) > 0 for wait in (10, 100)]
            median = statistics.median(timings)
            rows.append(
                {
                    "batches": stored,
                    "fetch_ms": round(median * 1000, 2),
                    "us_per_batch": round(median / stored * 1e6, 3),
                    "records_with_10ms_wait": short[0],
                    "records_with_100ms_wait": short[1],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    finally:
        await client.close()
    return rows


async def batches_per_partition(client: AIOKafkaClient, topic: str, partition: int) -> int:
    """Record batches stored in a partition, counted by reading it from the start."""
    offset, batches = 0, 0
    while True:
        _, data = await _fetch(client, topic, partition, offset, 5000)
        records = MemoryRecords(data)
        if not records.has_next():
            return batches
        while (batch := records.next_batch()) is not None:
            batches += 1
            offset = max(offset, batch.next_offset)


async def simulator_batches(bootstrap: str, rate: float, linger_ms: float, seconds: float) -> dict[str, Any]:
    """Run the simulator's producer at `rate` for `seconds` and count the record batches it left per partition."""
    topic = f"sim-{rate:g}-{linger_ms:g}"
    await ensure_topics(bootstrap, [topic], PARTITIONS, 1)
    events = live_events(SimulationSpec(leads=500, seed=11))
    async with EventProducer(bootstrap, topic, linger_ms=linger_ms) as producer:
        sent = await producer.send_paced(events, rate=rate, limit=int(rate * seconds))
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        per_partition = [await batches_per_partition(client, topic, p) for p in range(PARTITIONS)]
    finally:
        await client.close()
    per_minute = max(per_partition) * 60 / seconds
    return {
        "rate": rate,
        "linger_ms": linger_ms,
        "events": sent,
        "batches_per_partition_per_minute": round(per_minute, 1),
        "batches_per_partition_per_hour": round(per_minute * 60),
    }


def markdown(cost: list[dict[str, Any]], producers: list[dict[str, Any]]) -> str:
    per_batch = statistics.median(row["us_per_batch"] for row in cost)
    lines = [
        "# The dev broker's fetch cost",
        "",
        f"Run {now_iso()}. Tansu (in-memory storage) lists every stored record batch of a partition on each fetch;",
        f"median cost {per_batch:.2f} µs per stored batch. A fetch returns nothing once listing takes its max wait.",
        "",
        "| record batches in the partition | fetch of the last record | µs per batch | records with 10 ms wait |"
        " with 100 ms |",
        "|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {r['batches']:,} | {r['fetch_ms']:.1f} ms | {r['us_per_batch']:.2f} | {r['records_with_10ms_wait']} |"
        f" {r['records_with_100ms_wait']} |"
        for r in cost
    ]
    lines += [
        "",
        "Record batches the simulator's producer leaves in a partition (the busiest of 6):",
        "",
        "| events/s | linger | batches per partition per hour | fetch listing after 1 hour | after 8 hours |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in producers:
        hourly = row["batches_per_partition_per_hour"]
        lines.append(
            f"| {row['rate']:,.0f} | {row['linger_ms']:g} ms | {hourly:,} | {hourly * per_batch / 1000:.1f} ms |"
            f" {8 * hourly * per_batch / 1000:.1f} ms |"
        )
    return "\n".join(lines) + "\n"


async def run(sizes: list[int], repeats: int, seconds: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with (
        tempfile.TemporaryDirectory(prefix="leadscore-dev-broker-") as scratch,
        start_broker(workdir=Path(scratch)) as broker,
    ):
        cost = await fetch_cost(broker.bootstrap_servers, sizes, repeats)
        producers = []
        for rate in (50.0, 1000.0):
            for linger in (5.0, 1000.0):
                producers.append(await simulator_batches(broker.bootstrap_servers, rate, linger, seconds))
                print(json.dumps(producers[-1]), flush=True)
    return cost, producers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dev_broker", description=__doc__)
    parser.add_argument("--sizes", default="2000,8000,16000,32000,64000", help="stored batches to measure at")
    parser.add_argument("--repeats", type=int, default=5, help="fetches per size (median)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of simulated traffic per producer")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    cost, producers = asyncio.run(run(sizes, args.repeats, args.seconds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dev-broker.md").write_text(markdown(cost, producers))
    (RESULTS / "dev-broker.json").write_text(json.dumps({"fetch_cost": cost, "producers": producers}, indent=2))
    print(f"wrote {RESULTS / 'dev-broker.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
