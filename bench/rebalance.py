"""`python -m bench.rebalance [--rate 2000]`: how long partitions stop while consumers join, die and leave.

Events are produced at a steady rate to a 6-partition topic while the consumer group changes: consumer A runs
alone, B joins, B is killed with SIGKILL, C joins, C leaves with SIGTERM. Every 100 ms the group's committed
offset of each partition is sampled (a committed offset is what the service has written and will not redo) and
compared with what the producer had acknowledged there. A partition *stalls* while it has acknowledged events
beyond its committed offset and that offset does not move; after each change the report gives the longest stall
of any partition and the median over partitions, beside the same figures for a quiet stretch before any change.

Writes bench/results/rebalance.md and .json (or --out). Starts its own redis-server and broker on free loopback
ports and stops every process it started.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from bench.report import machine_info, now_iso
from bench.services import bench_env, bench_names
from bench.workload import generate, kafka_producer
from devtools.servers import LocalProcess, leadscore_process, start_broker, start_redis

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 6
SAMPLE_SECONDS = 0.1
# (seconds after the start, what happens): spaced so that each change settles before the next
SCHEDULE = (
    (12.0, "B joins"),
    (24.0, "B is killed (SIGKILL)"),
    (44.0, "C joins"),
    (56.0, "C leaves (SIGTERM)"),
)
QUIET = (6.0, 12.0)  # A alone, after its start-up: the stall a partition sees without any change
PRODUCE_SECONDS = 68.0


@dataclass
class Change:
    what: str
    at_seconds: float
    worst_stall_seconds: float
    median_stall_seconds: float


class Acknowledged:
    """The end offset of every partition as the broker acknowledged it (delivery reports, not the watermark)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ends = [0] * PARTITIONS

    def delivered(self, error: object, message: object) -> None:
        if error is None:
            partition, offset = message.partition(), message.offset()  # type: ignore[attr-defined]
            with self._lock:
                self.ends[partition] = max(self.ends[partition], offset + 1)

    def snapshot(self) -> list[int]:
        with self._lock:
            return list(self.ends)


def produce_steadily(bootstrap: str, topic: str, rate: int, seconds: float, acknowledged: Acknowledged) -> None:
    workload = generate(int(rate * seconds), 20_000, seed=31)
    producer = kafka_producer(bootstrap, linger_ms=5)
    started = time.monotonic()
    for index, (key, value) in enumerate(workload.messages):
        due = started + index / rate
        while (wait := due - time.monotonic()) > 0:
            producer.poll(min(wait, 0.01))
        producer.produce(topic, value=value, key=key, on_delivery=acknowledged.delivered)
    producer.flush(60)


def stalls(samples: list[tuple[float, list[int], list[int]]], start: float, end: float) -> list[float]:
    """Each partition's longest time in [start, end) with events waiting and its committed offset unmoved."""
    longest = [0.0] * PARTITIONS
    for partition in range(PARTITIONS):
        since: float | None = None
        previous: int | None = None
        for at, committed, acknowledged in samples:
            if at < start or at >= end:
                continue
            moved = previous is not None and committed[partition] != previous
            waiting = acknowledged[partition] > committed[partition]
            if moved or not waiting:
                since = None
            elif since is None:
                since = at
            if since is not None:
                longest[partition] = max(longest[partition], at - since)
            previous = committed[partition]
    return longest


def _wait_for_topic(reader: Consumer, topic: str, creator: LocalProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        metadata = reader.list_topics(topic, timeout=5).topics.get(topic)
        if metadata is not None and metadata.error is None and len(metadata.partitions) == PARTITIONS:
            return
        if not creator.running or time.monotonic() > deadline:
            raise RuntimeError(f"{topic} did not appear with {PARTITIONS} partitions:\n{creator.log_tail()}")
        time.sleep(0.2)


def run(rate: int, workdir: Path) -> dict[str, object]:
    names = bench_names("rebalance")
    processes: list[LocalProcess] = []
    with start_redis(workdir=workdir / "redis") as redis, start_broker(workdir=workdir / "broker") as broker:
        env = bench_env(redis.url, broker.bootstrap_servers, names, PARTITIONS)

        def consumer(name: str) -> LocalProcess:
            process = leadscore_process(name, ["consume", "--metrics-port", "0"], env, workdir)
            process.start()
            processes.append(process)
            return process

        reader = Consumer(
            {"bootstrap.servers": broker.bootstrap_servers, "group.id": names.group, "allow.auto.create.topics": False}
        )
        try:
            first = consumer("consumer-a")
            # the topic exists once A created it; produce from then on
            acknowledged = Acknowledged()
            producing = threading.Thread(
                target=produce_steadily,
                args=(broker.bootstrap_servers, names.events_topic, rate, PRODUCE_SECONDS, acknowledged),
                daemon=True,
            )
            _wait_for_topic(reader, names.events_topic, first)  # A creates it; producing starts the clock
            started = time.monotonic()
            producing.start()
            samples: list[tuple[float, list[int], list[int]]] = []
            pending = list(SCHEDULE)
            joined: dict[str, LocalProcess] = {}
            deadline = started + PRODUCE_SECONDS + 120
            partitions = [TopicPartition(names.events_topic, p) for p in range(PARTITIONS)]
            while time.monotonic() < deadline:
                now = time.monotonic() - started
                if pending and now >= pending[0][0]:
                    _, what = pending.pop(0)
                    if what.startswith("B joins"):
                        joined["B"] = consumer("consumer-b")
                    elif what.startswith("B is killed"):
                        joined["B"].kill()
                    elif what.startswith("C joins"):
                        joined["C"] = consumer("consumer-c")
                    else:
                        joined["C"].stop()
                committed = [max(tp.offset, 0) for tp in reader.committed(partitions, timeout=5)]
                ends = acknowledged.snapshot()
                samples.append((now, committed, ends))
                if not producing.is_alive() and not pending and committed == ends:
                    break
                time.sleep(SAMPLE_SECONDS)
            drained = samples[-1][1] == samples[-1][2]
            assert first.running, first.log_tail()
        finally:
            reader.close()
            for process in processes:
                process.stop()
    quiet = stalls(samples, *QUIET)
    changes = [Change("none (A alone)", QUIET[0], max(quiet), statistics.median(quiet))]
    boundaries = [at for at, _ in SCHEDULE] + [samples[-1][0] + 1]
    for (at, what), end in zip(SCHEDULE, boundaries[1:], strict=True):
        after = stalls(samples, at, end)
        changes.append(Change(what, at, max(after), statistics.median(after)))
    return {
        "rate": rate,
        "drained": drained,
        "events": sum(samples[-1][2]),
        "changes": [asdict(change) for change in changes],
        "machine": machine_info({}),
        "finished": now_iso(),
    }


def report(result: dict[str, object]) -> str:
    lines = [
        f"# Rebalance pauses at {result['rate']} events/s, {PARTITIONS} partitions",
        "",
        "The longest time any partition had events waiting while its committed offset did not move, after each"
        " change of the consumer group (and, first, in a quiet stretch with no change). Medians over partitions"
        " beside it. Measured by `python -m bench.rebalance`.",
        "",
        "| change | at (s) | worst partition stall (s) | median partition stall (s) |",
        "|---|---|---|---|",
    ]
    changes = result["changes"]
    assert isinstance(changes, list)
    for change in changes:
        lines.append(
            f"| {change['what']} | {change['at_seconds']:.0f} | {change['worst_stall_seconds']:.1f} |"
            f" {change['median_stall_seconds']:.1f} |"
        )
    lines += ["", f"All {result['events']} events committed at the end: {'yes' if result['drained'] else 'no'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rebalance", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=2000, help="events per second produced (default 2000)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where rebalance.md and .json go")
    parser.add_argument("--workdir", type=Path, help="keep the servers' and consumers' logs here")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args.rate, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="leadscore-rebalance-") as scratch:
            result = run(args.rate, Path(scratch))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rebalance.json").write_text(json.dumps(result, indent=2) + "\n")
    text = report(result)
    (args.out / "rebalance.md").write_text(text)
    print(text)
    return 0 if result["drained"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
