"""Redis memory per lead: a million realistic lead records written through LeadStore.save_batch.

The records come from the service's own pipeline: a pool of leads has its simulator-shaped events folded,
scored and stored by ScoringPipeline.process, and the million leads are copies of the pool's records under
new ids and offsets. So the stored values carry whatever a real record carries today (state, fence,
duplicate window, score, segment membership) without building records by hand.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster

from app.domain.batch import SourcedEvent
from app.domain.lead import LeadRecord
from app.settings import Settings
from app.storage.keys import SEGMENT_KEY_PREFIX, lead_key
from app.storage.leads import LeadStore, open_store
from bench.consume import service_pipeline
from bench.workload import Message, lead_id
from consumers.messages import Rejection, parse_message

WRITE_CHUNK = 2_000
PARTITIONS = 6
# Offsets of a long-lived busy partition have nine digits; the fence stores them in every record.
OFFSET_BASE = 100_000_000


@dataclass(frozen=True)
class RecordPool:
    records: list[LeadRecord]
    events_per_lead: float
    # used_memory per pool lead as the pipeline itself left it: every key it writes for a lead (record,
    # segment sets, due index, score history), which the copies written by save_batch alone do not all get.
    pipeline_bytes_per_lead: float


async def record_pool(store: LeadStore, settings: Settings, messages: Sequence[Message], size: int) -> RecordPool:
    """Records of up to `size` leads, made by the real pipeline from their events in `messages`."""
    await store.redis.flushall()
    before = await _used_memory(store.redis)
    pipeline = await service_pipeline(settings, store)
    wanted: set[bytes] = set()
    events = 0
    batch: list[SourcedEvent] = []
    for offset, (key, value) in enumerate(messages):
        if key not in wanted:
            if len(wanted) >= size:
                continue
            wanted.add(key)
        event = parse_message(key, value, settings.max_message_bytes)
        if isinstance(event, Rejection):
            raise RuntimeError(f"workload event rejected: {event}")
        batch.append(SourcedEvent(event, 0, offset))
        events += 1
        if len(batch) >= WRITE_CHUNK:
            await pipeline.save(await pipeline.prepare(batch))
            batch = []
    if batch:
        await pipeline.save(await pipeline.prepare(batch))
    written = await _used_memory(store.redis) - before
    records = await store.load_many([key.decode() for key in wanted])
    await store.redis.flushall()
    return RecordPool(list(records.values()), events / len(wanted), written / len(wanted))


async def memory_per_lead(
    settings: Settings,
    messages: Sequence[Message],
    *,
    leads: int,
    pool_size: int,
    sample: int,
    due_fraction: float = 0.01,
) -> dict[str, Any]:
    """Writes to the Redis of `settings` and empties it: give it a server of its own.

    The copies are also the sweeper's workload: `due_fraction` of them are due now, the rest a day from
    now, and the sweeper's time to rescore the due ones is measured over the full million.
    """
    now_ms = time.time_ns() // 1_000_000
    due_every = max(round(1 / due_fraction), 1)
    store = open_store(settings)
    try:
        made = await record_pool(store, settings, messages, pool_size)
        pool = made.records
        redis = store.redis
        await redis.flushall()
        before = await _used_memory(redis)
        value_bytes = 0
        for start in range(0, leads, WRITE_CHUNK):
            chunk = [
                dataclasses.replace(
                    pool[n % len(pool)],
                    lead_id=lead_id(n + 1),
                    partition=n % PARTITIONS,
                    offset=OFFSET_BASE + n,
                    due_ms=now_ms - 1_000 if n % due_every == 0 else now_ms + 86_400_000,
                )
                for n in range(start, min(start + WRITE_CHUNK, leads))
            ]
            refused = await store.save_batch(chunk)
            if refused:
                raise RuntimeError(f"{len(refused)} benchmark records refused by the store's fence")
        after = await _used_memory(redis)
        stored = await redis.dbsize()
        sample_ids = [lead_id(1 + n) for n in random.Random(leads).sample(range(leads), min(sample, leads))]
        pipe = redis.pipeline(transaction=False)
        for lead in sample_ids:
            pipe.memory_usage(lead_key(lead), samples=0)
            pipe.strlen(lead_key(lead))
        answers = await pipe.execute()
        usages = [int(a) for a in answers[0::2]]
        value_bytes = sum(int(a) for a in answers[1::2])
        segment_bytes = 0
        async for key in redis.scan_iter(match=f"{SEGMENT_KEY_PREFIX}*"):
            segment_bytes += int(await redis.memory_usage(key, samples=0) or 0)
        sweep = await _sweep_all(settings, store)
        await redis.flushall()
    finally:
        await store.close()
    return {
        "leads": leads,
        "keys": stored,
        "pool": len(pool),
        "pool_events_per_lead": made.events_per_lead,
        "pool_bytes_per_lead": made.pipeline_bytes_per_lead,
        "used_memory_per_lead": (after - before) / leads,
        "memory_usage_median": statistics.median(usages),
        "value_bytes_mean": value_bytes / len(sample_ids),
        "segment_sets_per_lead": segment_bytes / leads,
        "due_leads": sum(1 for n in range(leads) if n % due_every == 0),
        **sweep,
    }


async def _sweep_all(settings: Settings, store: LeadStore) -> dict[str, Any]:
    """Run the sweeper's rounds over every partition until nothing is due; how long, and how much it read."""
    pipeline = await service_pipeline(settings, store)
    swept = rounds = 0
    started = time.perf_counter()
    for partition in range(PARTITIONS):
        for _ in range(10_000):  # bounded; each round takes up to sweep_batch due leads
            outcome = await pipeline.sweep(partition, settings.sweep_batch)
            rounds += 1
            swept += len(outcome.records) + len(outcome.fenced)
            if len(outcome.records) + len(outcome.fenced) < settings.sweep_batch:
                break
    seconds = time.perf_counter() - started
    return {"sweep_seconds": seconds, "swept": swept, "sweep_rounds": rounds, "swept_per_second": swept / seconds}


async def _used_memory(redis: Redis | RedisCluster) -> int:
    assert isinstance(redis, Redis), "the memory figures are for one Redis"
    info = await redis.info("memory")
    return int(info["used_memory"])
