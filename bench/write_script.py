"""`python -m bench.write_script [--leads N] [--batch B] [--repeats R]`: Redis's cost per lead of the batch write.

On a redis-server of its own (free loopback port, stopped at the end), the store writes the same leads in batches
of B, as the consumer does, three times over: as new leads, as updates that keep every segment (new offset, score
and due time) and as updates that move every lead to another segment of each set. Records are folded from the
simulator's history and written with `LeadStore.save_batch` (record values, segment sets, due index and score
history, the service's defaults). Prints one JSON line: for each kind of write, the median over repeats of
Redis's process CPU and its own timing of the script (`INFO commandstats`, nested commands included), µs per lead.
Run it in two checkouts in turn to compare a change of the write script side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import redis

from app.domain.lead import LeadRecord
from app.settings import Settings
from app.storage.leads import BatchWrite, LeadStore
from bench.cpu import cpu_seconds
from devtools.servers import start_redis
from devtools.simulator import SimulationSpec, simulate_history
from schemas.events import Event

KINDS = ("new", "same_segments", "moved")


def folded_leads(leads: int, settings: Settings) -> list[LeadRecord]:
    """One record per simulated lead, folded from its history (varied types, properties and profiles)."""
    from app.domain.batch import SourcedEvent, fold_batch

    history = simulate_history(SimulationSpec(leads=leads, seed=11))
    batch = [SourcedEvent(Event.model_validate(event), 0, n) for n, event in enumerate(history)]
    return list(fold_batch({}, batch, settings.service_config.features, dedupe_window=8).records.values())


def scored(records: list[LeadRecord], settings: Settings, round_: int, move: bool) -> list[LeadRecord]:
    """The records as a scoring round leaves them: a newer offset, a new score and due time; with `move`, each
    lead in the next segment of every set (cycling through the set's segments)."""
    sets = settings.service_config.segments.sets
    for n, record in enumerate(records):
        record.offset += 1_000_000
        record.score = ((n * 7919 + round_ * 104_729) % 10_000) / 10_000
        record.scored_ms = 1_790_000_000_000 + round_
        record.due_ms = record.scored_ms + 3_600_000 + n
        shift = round_ if move else 0
        record.segments = {
            name: rules.names[(n + shift) % len(rules.names)] for name, rules in sets.items() if rules.names
        }
        record.history_entry = b'{"at":%d,"score":%f}' % (record.scored_ms, record.score)
    return records


def measure(client: redis.Redis, pid: int, write: Callable[[], object], leads: int) -> tuple[float, float]:
    """(process CPU, script time) per lead, µs, of `write`."""
    client.config_resetstat()
    before = cpu_seconds(pid)
    write()
    cpu = cpu_seconds(pid) - before
    script = client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0)
    return cpu / leads * 1e6, script / leads


async def _rounds(
    url: str,
    pid: int,
    base: list[LeadRecord],
    settings: Settings,
    batch: int,
    repeats: int,
    figures: dict[str, dict[str, list[float]]],
) -> None:
    client = redis.Redis.from_url(url)
    store = LeadStore.from_url(
        url,
        spec=settings.service_config.features,
        segments=settings.service_config.segments,
        history_length=settings.history_length,
    )
    try:
        for repeat in range(repeats):
            client.flushdb()  # the write script registers the records' layout again
            records = [LeadRecord(r.lead_id, r.state, r.partition, r.offset) for r in base]
            for round_, (kind, move) in enumerate([("new", False), ("same_segments", False), ("moved", True)], 1):
                records = scored(records, settings, repeat * 10 + round_, move)
                # encoded before the clock starts: the figures are Redis's work alone
                writes = [await store.batch_write(records[i : i + batch]) for i in range(0, len(records), batch)]
                cpu, script = measure(client, pid, partial(_send_all, store, writes), len(records))
                figures[kind]["cpu"].append(cpu)
                figures[kind]["script"].append(script)
    finally:
        await store.close()
        client.close()


def _send_all(store: LeadStore, writes: list[BatchWrite]) -> None:
    for write in writes:
        store.send(write)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.write_script", description=__doc__)
    parser.add_argument("--leads", type=int, default=20_000, help="leads written per round")
    parser.add_argument("--batch", type=int, default=2_000, help="leads per batch write (the consumer's default)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats (median reported)")
    args = parser.parse_args(argv)
    settings = Settings()
    base = folded_leads(args.leads, settings)
    figures: dict[str, dict[str, list[float]]] = {kind: {"cpu": [], "script": []} for kind in KINDS}
    with (
        tempfile.TemporaryDirectory(prefix="leadscore-write-") as workdir,
        start_redis(workdir=Path(workdir)) as server,
    ):
        assert server.process is not None and server.process.pid is not None
        asyncio.run(_rounds(server.url, server.process.pid, base, settings, args.batch, args.repeats, figures))
    summary = {
        f"{kind}_{what}_us_per_lead": round(statistics.median(values), 2)
        for kind, by_what in figures.items()
        for what, values in by_what.items()
    }
    print(json.dumps({**summary, "leads": args.leads, "batch": args.batch, "repeats": args.repeats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
