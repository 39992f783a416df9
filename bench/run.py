"""`python -m bench.run [--quick] [--repeats N] [--only NAME,...]`: leadscore's performance benchmark.

Starts its own redis-server and Kafka-protocol broker on free loopback ports (devtools.servers), pre-produces
a backlog of simulator-shaped events, runs each measurement `--repeats` times and writes
bench/results/latest.json, latest.md and profile.txt. Every process it starts is stopped at the end.

Measurements (names for --only): raw, parse, pipeline, spread, cluster, reasons, baseline, profile, api, freshness,
memory.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import io
import logging
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import RedisDsn
from redis.asyncio import Redis

from app.eventloop import run_async
from app.settings import Settings
from bench import api as api_bench
from bench.consume import (
    Backlog,
    PipelineRun,
    full_pipeline,
    listing_page_ms,
    one_at_a_time,
    parse_consume,
    raw_consume,
    stored_counts,
    stored_lead_ids,
)
from bench.cpu import CpuMeter, cpu_seconds
from bench.freshness import (
    FreshnessPlan,
    ProbeSource,
    batch_totals,
    measure_window,
    per_batch,
    wait_until_scoring,
)
from bench.memory import memory_per_lead
from bench.report import Results, at_least, at_most, machine_info, markdown, now_iso, write
from bench.services import bench_env, bench_fetch_wait_ms, bench_names, start_api, start_consumer
from bench.workload import Workload, generate, produce_all
from consumers.topics import ensure_topics
from devtools.servers import (
    LocalProcess,
    LocalRedis,
    broker_binary,
    free_port,
    start_broker,
    start_redis,
    start_redis_cluster,
)
from models.scoring import ModelRefused, Scorer, load_scorer

# Result keys of a measurement's figures, by the key each figure has in the table.
# Processes whose CPU the freshness window reports: all of them share the machine's cores.
FRESHNESS_PROCESSES = {
    "consumer": "the consumer (leadscore consume)",
    "api": "the API (leadscore serve, polled by the probes)",
    "broker": "the Kafka-protocol broker",
    "redis": "Redis",
    "load": "the load generator (this process: background producer and probes)",
}
FRESHNESS_FIGURES = {
    "fresh_p50_ms": "p50_ms",
    "fresh_p99_ms": "p99_ms",
    "fresh_rate": "background_rate",
    "fresh_probes": "probes",
    "fresh_skipped": "probes_skipped_busy",
}
# The same measurement at a rate the 2-core setup sustains, run first (no backlog yet): the pipeline's own
# latency, apart from queueing.
SUSTAINED_RATE = 1_000
SUSTAINED_FRESHNESS_FIGURES = {
    "fresh_sustained_p50_ms": "p50_ms",
    "fresh_sustained_p99_ms": "p99_ms",
    "fresh_sustained_probes": "probes",
}
MEMORY_FIGURES = {
    "mem_per_lead": "used_memory_per_lead",
    "mem_usage_median": "memory_usage_median",
    "mem_value_bytes": "value_bytes_mean",
    "mem_segment_per_lead": "segment_sets_per_lead",
    "mem_pipeline_per_lead": "pool_bytes_per_lead",
    "mem_pool_events": "pool_events_per_lead",
    "sweep_due": "due_leads",
    "sweep_seconds": "sweep_seconds",
    "sweep_rate": "swept_per_second",
    "sweep_read": "swept",
}
MEASUREMENTS = (
    "raw",
    "parse",
    "pipeline",
    "spread",
    "cluster",
    "reasons",
    "baseline",
    "profile",
    "api",
    "freshness",
    "memory",
)
# Reason codes per segment change, for the measurement of what they cost on the hot path.
CHANGE_REASONS = 3
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARTITIONS = 6
SPREAD_LEADS = 50_000
SPREAD_WINDOW_MS = 30 * 86_400_000
SEED = 20261122
PACED_CONNECTIONS = 32
CHECKED_LEADS = 200  # leads whose stored event counts are compared with the workload after a pipeline run
MIN_STORED_LEADS = 10_000  # the API reads random ones of these
PROFILE_TOP = 40
# The worker's stages in the order of a batch (rows without values are left out of the table); a stage
# the worker reports beyond these is added at the end of the table. `other` is wall time outside stages.
WORKER_STAGES = ("parse", "load", "fold", "score", "wait", "publish", "write", "commit", "other")
# Stages that run in the background while the next batch is prepared: they take wall time only through
# `wait` (the next batch waiting for them), so `other` leaves them out.
OVERLAPPED_STAGES = frozenset({"publish", "write", "commit"})
# 1-minute load average above which the machine is reported as busy before the run (ours is idle then).
BUSY_LOAD = 0.5

CONSUME_LIMIT_SECONDS = 120.0
# Memory per lead is the same on every repeat (same records, same allocator): one run of a million
# leads (~45 s) is enough, and the time goes to the measurements that do vary.
MEMORY_REPEATS = 1
log = logging.getLogger("bench")
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    events: int  # the pre-produced backlog
    leads: int
    pipeline_max_seconds: float  # a pipeline run stops here even if the backlog is not done
    profile_max_seconds: float
    baseline_events: int  # the one-at-a-time sample
    profile_events: int
    freshness_rate: float
    freshness_warmup: float
    freshness_seconds: float
    api_seconds: float  # each wrk run
    paced_seconds: float
    memory_leads: int
    spread_events: int  # the spread workload: out of order over 30 days, most events of a batch for other leads
    memory_pool: int
    memory_sample: int


DEFAULT_SIZES = Sizes(
    events=300_000, leads=50_000, pipeline_max_seconds=60, profile_max_seconds=30,
    baseline_events=10_000, profile_events=100_000,
    freshness_rate=5_000, freshness_warmup=3, freshness_seconds=20,
    api_seconds=10, paced_seconds=10,
    memory_leads=1_000_000, memory_pool=5_000, memory_sample=1_000, spread_events=200_000,
)  # fmt: skip
QUICK_SIZES = Sizes(
    events=60_000, leads=50_000, pipeline_max_seconds=20, profile_max_seconds=15,
    baseline_events=2_000, profile_events=30_000,
    freshness_rate=5_000, freshness_warmup=2, freshness_seconds=6,
    api_seconds=4, paced_seconds=4,
    memory_leads=100_000, memory_pool=2_000, memory_sample=500, spread_events=50_000,
)  # fmt: skip


def define_stage(results: Results, stage: str) -> str:
    key = f"stage_{stage}_us"
    when = " (in the background, beside the next batch)" if stage in OVERLAPPED_STAGES else ""
    results.define(key, f"(3) per event: {stage} stage{when}", "µs/event", digits=1)
    return key


def define_figures(results: Results) -> None:
    results.define("raw_eps", "(1) raw consume: aiokafka getmany, no processing", "events/s")
    results.define("parse_eps", "(2) consume + parse_message (JSON + schema validation)", "events/s")
    results.define(
        "pipeline_eps",
        "(3) full pipeline, one ConsumerWorker (validate, fold, predict, segment, write, commit)",
        "events/s",
        target=at_least(50_000, "≥ 50,000"),
    )
    results.define(
        "pipeline_redis_us", "(3) Redis CPU per event (every read and write of the pipeline)", "µs/event", digits=1
    )
    results.define(
        "spread_eps",
        "(3s) full pipeline on the spread workload: 50,000 leads, events out of order over 30 days, a batch's"
        " events nearly all for different leads",
        "events/s",
        target=at_least(50_000, "≥ 50,000"),
    )
    results.define("spread_consumer_us", "(3s) the consumer's CPU per event", "µs/event", digits=1)
    results.define("spread_redis_us", "(3s) Redis CPU per event", "µs/event", digits=1)
    results.define(
        "spread_redis_lead_us",
        "(3s) Redis CPU per written lead (a lead with several events in a batch is written once)",
        "µs/lead",
        digits=1,
        target=at_most(15, "≤ 15"),
    )
    results.define("listing_ms", "(3) a page of 50 of the largest segment, cursor walk (LeadStore)", "ms", digits=2)
    results.define("cluster_listing_ms", "(3c) the same on the cluster: 64 groups' sorted sets merged", "ms", digits=2)
    results.define("cluster_eps", "(3c) full pipeline, the store on a local three-master Redis Cluster", "events/s")
    results.define("cluster_redis_us", "(3c) Redis CPU per event, the three masters together", "µs/event", digits=1)
    results.define(
        "cluster_vs_pipeline", "(3c) ÷ (3): the cluster's share of one Redis's throughput", "ratio", digits=2
    )
    results.define("pipeline_vs_raw", "(3) ÷ (1): full pipeline as a share of raw consume", "ratio", digits=3)
    results.define(
        "pipeline_cpu_share",
        "(3) the consumer's CPU time ÷ wall time (1.00: CPU-bound; below: waiting on Redis or the broker)",
        "ratio",
        digits=2,
    )
    results.define(
        "reasons_eps",
        f"(3r) the same with reason codes in segment-change events (LEADSCORE_CHANGE_REASONS={CHANGE_REASONS})",
        "events/s",
    )
    results.define(
        "reasons_vs_pipeline", "(3r) ÷ (3): what change-event reasons leave of the throughput", "ratio", digits=2
    )
    results.define("pipeline_vs_parse", "(3) ÷ (2): full pipeline as a share of consume + parse", "ratio", digits=3)
    for stage in WORKER_STAGES:
        define_stage(results, stage)
    results.define(
        "baseline_eps",
        "(4) one event at a time (await read, 1-row predict, await publish, await write), the backlog's first events",
        "events/s",
    )
    results.define("head_eps", "(3) full pipeline over the same first events (its first batches)", "events/s")
    results.define(
        "pipeline_vs_baseline", "(3) ÷ (4) on the same first events: speed-up of batching", "ratio", digits=1
    )
    results.define(
        "fresh_p50_ms", "(5) freshness at 5,000 events/s: produce → readable via API, p50", "ms",
        target=at_most(20, "≤ 20"), digits=1,
    )  # fmt: skip
    results.define(
        "fresh_p99_ms", "(5) freshness at 5,000 events/s: produce → readable via API, p99", "ms",
        target=at_most(100, "≤ 100"), digits=1,
    )  # fmt: skip
    results.define("fresh_rate", "(5) background rate achieved during the window", "events/s")
    results.define(
        "fresh_sustained_p50_ms", f"(5s) the same at {SUSTAINED_RATE:,} events/s, measured first: p50", "ms", digits=1
    )
    results.define(
        "fresh_sustained_p99_ms", f"(5s) the same at {SUSTAINED_RATE:,} events/s, measured first: p99", "ms", digits=1
    )
    results.define("fresh_sustained_probes", "(5s) probes measured in that window", "probes")
    results.define("fresh_probes", "(5) probes measured per window", "probes")
    results.define("fresh_skipped", "(5) probes not sent because 8 were still polling", "probes")
    for process, what in FRESHNESS_PROCESSES.items():
        results.define(f"fresh_cpu_{process}", f"(5) CPU during the window, {what}", "cores", digits=2)
    results.define("api_healthz_rps", "(6) GET /healthz, wrk 64 connections, 1 worker", "requests/s")
    results.define("api_leads_rps", "(6) GET /leads/{id} without reasons, wrk 64 connections, 1 worker", "requests/s")
    results.define(
        "api_ratio", "(6) /leads/{id} ÷ /healthz requests/s", "ratio", target=at_least(0.6, "≥ 0.60"), digits=3
    )
    results.define("api_paced_rate", "(6) paced GET /leads/{id} at half its max rate: achieved", "requests/s")
    results.define("api_paced_p50_ms", "(6) paced GET /leads/{id} at half its max rate: p50", "ms", digits=2)
    results.define(
        "api_paced_p99_ms", "(6) paced GET /leads/{id} at half its max rate: p99", "ms",
        target=at_most(15, "≤ 15"), digits=2,
    )  # fmt: skip
    results.define(
        "api_reasons_p50_ms", "(6) GET /leads/{id} with reasons at 100 requests/s: p50", "ms",
        target=at_most(10, "≤ 10"), digits=2,
    )  # fmt: skip
    results.define(
        "mem_per_lead", "(7) Redis used_memory per lead (1M leads, INFO memory delta)", "bytes",
        target=at_most(1024, "≤ 1,024"),
    )  # fmt: skip
    results.define("mem_usage_median", "(7) MEMORY USAGE of a lead key, median of a sample", "bytes")
    results.define("mem_value_bytes", "(7) stored record value length, mean of the sample", "bytes")
    results.define("mem_segment_per_lead", "(7) segment sorted sets, per lead", "bytes")
    results.define(
        "mem_pipeline_per_lead",
        "(7) used_memory per lead as the pipeline itself writes it (the pool's leads: every key, history included)",
        "bytes",
        target=at_most(1024, "≤ 1,024"),
    )
    results.define("mem_pool_events", "(7) events per pool lead", "events", digits=1)
    results.define("sweep_due", "(8) sweeper: due leads among the 1M stored (1 %)", "leads")
    results.define("sweep_seconds", "(8) sweeper: time to rescore every due lead", "s", digits=2)
    results.define("sweep_rate", "(8) sweeper: due leads rescored per second", "leads/s")
    results.define("sweep_read", "(8) sweeper: leads read (= due, no scan of the rest)", "leads")


class Bench:
    def __init__(self, args: argparse.Namespace, results: Results, workdir: Path) -> None:
        self.sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
        self.repeats: int = args.repeats
        self.selected: set[str] = args.only
        self.results = results
        self.workdir = workdir
        self.tag = uuid.uuid4().hex[:8]
        self.failed: list[str] = []
        self.redis: LocalRedis | None = None
        self.bootstrap = ""
        self.workload: Workload | None = None
        self.spread_workload: Workload | None = None
        self.out_dir: Path = args.out
        self._groups = 0

    # -- plumbing -------------------------------------------------------------------------------------

    def redis_url(self, db: int) -> str:
        assert self.redis is not None
        return f"redis://{self.redis.host}:{self.redis.port}/{db}"

    @property
    def main_topic(self) -> str:
        return f"bench-events-{self.tag}"

    def settings(self, *, redis_url: str | None = None, change_reasons: int = 0) -> Settings:
        """Service settings for one in-process consumer: a consumer group nobody has used."""
        self._groups += 1
        names = bench_names(f"{self.tag}-{self._groups}")
        return Settings(
            kafka_bootstrap_servers=self.bootstrap,
            redis_url=RedisDsn(redis_url or self.redis_url(0)),
            events_topic=self.main_topic,
            dlq_topic=names.dlq_topic,
            segment_changes_topic=names.changes_topic,
            consumer_group=names.group,
            topic_partitions=PARTITIONS,
            change_reasons=change_reasons,
            fetch_max_wait_ms=bench_fetch_wait_ms(),
        )

    def backlog(self, events: int | None = None) -> Backlog:
        assert self.workload is not None
        return Backlog(self.bootstrap, self.main_topic, PARTITIONS, events or self.workload.size, self.redis_url(0))

    def attempt(self, name: str, step: Callable[[], None]) -> None:
        """Run one measurement; a failure is reported and the others still run."""
        started = time.monotonic()
        try:
            step()
        except Exception as exc:
            traceback.print_exc()
            self.failed.append(name)
            self.results.note(f"{name} failed: {_one_line(exc)}")
        say(f"[{name}] {time.monotonic() - started:.0f} s")

    # -- the run --------------------------------------------------------------------------------------

    def run(self, stack: ExitStack) -> None:
        self.redis = stack.enter_context(start_redis(workdir=self.workdir / "redis"))
        broker = stack.enter_context(start_broker(workdir=self.workdir / "broker"))
        self.bootstrap = broker.bootstrap_servers
        self.prepare_backlog()
        if "spread" in self.selected or "profile" in self.selected:
            self.prepare_spread()
        if "profile" in self.selected:
            self.attempt("profile", self.profile)
        for repeat in range(self.repeats):
            for name, step in (
                ("raw", self.raw),
                ("parse", self.parse),
                # The baseline empties the store; the pipeline after it leaves every lead stored for the API.
                ("baseline", self.baseline),
                ("reasons", self.reasons),
                ("pipeline", self.pipeline),
                ("spread", self.spread),
                ("cluster", self.cluster),
            ):
                if name in self.selected:
                    self.attempt(f"{name} {repeat + 1}/{self.repeats}", step)
        self.results.ratio("pipeline_vs_raw", "pipeline_eps", "raw_eps")
        self.results.ratio("pipeline_vs_parse", "pipeline_eps", "parse_eps")
        self.results.ratio("reasons_vs_pipeline", "reasons_eps", "pipeline_eps")
        self.results.ratio("cluster_vs_pipeline", "cluster_eps", "pipeline_eps")
        self.results.ratio("pipeline_vs_baseline", "head_eps", "baseline_eps")
        if "api" in self.selected:
            self.attempt("api", self.api)
            self.results.ratio("api_ratio", "api_leads_rps", "api_healthz_rps")
        if "freshness" in self.selected:
            self.attempt("freshness", self.freshness)
        if "memory" in self.selected:
            self.attempt("memory", self.memory)

    @property
    def spread_topic(self) -> str:
        return f"bench-spread-{self.tag}"

    def prepare_spread(self) -> None:
        """The spread workload on a topic of its own: the outside comparison's shape (most events of a batch for
        different leads, out of order over 30 days)."""
        sizes = self.sizes
        self.spread_workload = workload = generate(
            sizes.spread_events, SPREAD_LEADS, seed=SEED + 2, window_ms=SPREAD_WINDOW_MS, out_of_order=True
        )
        bounded(ensure_topics(self.bootstrap, [self.spread_topic], PARTITIONS, 1), 60)
        rate = produce_all(self.bootstrap, self.spread_topic, workload.messages)
        say(f"[spread] {workload.size:,} events over {len(workload.lead_ids):,} leads produced at {rate:,.0f}/s")

    def prepare_backlog(self) -> None:
        sizes = self.sizes
        started = time.perf_counter()
        self.workload = workload = generate(sizes.events, sizes.leads, seed=SEED)
        # The backlog stays in memory all run: keep the collector from walking it inside measured code.
        gc.collect()
        gc.freeze()
        say(
            f"[workload] {workload.size:,} events over {len(workload.lead_ids):,} leads, "
            f"{workload.mean_bytes:.0f} bytes each, made in {time.perf_counter() - started:.1f} s"
        )
        bounded(ensure_topics(self.bootstrap, [self.main_topic], PARTITIONS, 1), 60)
        rate = produce_all(self.bootstrap, self.main_topic, workload.messages)
        say(f"[workload] produced to {self.main_topic} ({PARTITIONS} partitions) at {rate:,.0f} events/s")

    def populate(self) -> list[str]:
        """Leads with stored state; runs the pipeline over the backlog first if fewer than MIN_STORED_LEADS have."""
        assert self.workload is not None
        stored = bounded(stored_lead_ids(self.redis_url(0)), 60)
        if len(stored) >= min(MIN_STORED_LEADS, len(self.workload.lead_ids)):
            return stored
        say("[populate] running the pipeline once over the backlog (not a measurement)")
        run = bounded(
            full_pipeline(self.backlog(), self.settings(), max_seconds=self._populate_seconds()),
            self._populate_seconds() + 120,
        )
        if not run.complete:
            raise RuntimeError(f"populating handled only {run.events:,} events in {run.seconds:.0f} s")
        return bounded(stored_lead_ids(self.redis_url(0)), 60)

    def _populate_seconds(self) -> float:
        """Populating must finish: allow the backlog at 1,000 events/s."""
        assert self.workload is not None
        return self.workload.size / 1_000

    # -- measurements ---------------------------------------------------------------------------------

    def raw(self) -> None:
        rate = bounded(raw_consume(self.backlog(), self.settings()), CONSUME_LIMIT_SECONDS)
        self.results.add("raw_eps", rate)
        say(f"  raw consume {rate:,.0f} events/s")

    def parse(self) -> None:
        rate = bounded(parse_consume(self.backlog(), self.settings()), CONSUME_LIMIT_SECONDS)
        self.results.add("parse_eps", rate)
        say(f"  consume + parse {rate:,.0f} events/s")

    def pipeline(self) -> None:
        limit = self.sizes.pipeline_max_seconds
        assert self.redis is not None and self.redis.process is not None
        redis_pids = [self.redis.process.pid]
        redis_cpu = sum(cpu_seconds(pid) for pid in redis_pids if pid is not None)
        run = bounded(
            full_pipeline(self.backlog(), self.settings(), max_seconds=limit, head=self.sizes.baseline_events),
            limit + 120,
        )
        redis_cpu = sum(cpu_seconds(pid) for pid in redis_pids if pid is not None) - redis_cpu
        self.results.add("pipeline_redis_us", redis_cpu / run.events * 1e6)
        self.results.add("listing_ms", bounded(listing_page_ms(self.redis_url(0)), 60))
        if run.complete:
            self.check_stored_counts()
        else:
            self.results.note(
                f"a pipeline run stopped at its {limit:.0f} s cap after {run.events:,} events: its rate is the "
                "steady state over that part, and the stored-counts check is skipped"
            )
        self.results.add("pipeline_eps", run.rate)
        self.results.add("pipeline_cpu_share", run.cpu_share)
        self.results.add("head_eps", run.head_rate)
        per_event = _stage_micros(run)
        for stage, micros in per_event.items():
            self.results.add(define_stage(self.results, stage), micros)
        self.results.detail("pipeline", {**asdict(run), "rate": run.rate, "stage_us_per_event": per_event})
        stages = ", ".join(f"{k} {per_event[k]:.1f}" for k in sorted(per_event, key=_stage_order))
        say(f"  full pipeline {run.rate:,.0f} events/s ({run.events:,} events, {run.seconds:.1f} s); µs/event {stages}")

    def spread(self) -> None:
        """The full pipeline over the spread workload, from an empty store, with the consumer's and Redis's CPU."""
        assert self.spread_workload is not None and self.redis is not None and self.redis.process is not None
        limit = self.sizes.pipeline_max_seconds
        workload = self.spread_workload
        backlog = Backlog(self.bootstrap, self.spread_topic, PARTITIONS, workload.size, self.redis_url(0))
        redis_pid = self.redis.process.pid
        before = cpu_seconds(redis_pid) if redis_pid is not None else 0.0
        settings = self.settings().model_copy(update={"events_topic": self.spread_topic})
        run = bounded(full_pipeline(backlog, settings, max_seconds=limit), limit + 120)
        redis_cpu = (cpu_seconds(redis_pid) if redis_pid is not None else 0.0) - before
        if run.complete:
            self.check_stored_counts(workload=workload)
        self.results.add("spread_eps", run.rate)
        self.results.add("spread_consumer_us", run.cpu_seconds / run.events * 1e6)
        self.results.add("spread_redis_us", redis_cpu / run.events * 1e6)
        self.results.add("spread_redis_lead_us", redis_cpu / max(run.leads_written, 1) * 1e6)
        per_event = _stage_micros(run)
        self.results.detail("spread", {**asdict(run), "rate": run.rate, "stage_us_per_event": per_event})
        stages = ", ".join(f"{k} {per_event[k]:.1f}" for k in sorted(per_event, key=_stage_order))
        say(
            f"  spread workload {run.rate:,.0f} events/s ({run.events:,} events, {run.leads_written:,} lead writes),"
            f" consumer {run.cpu_seconds / run.events * 1e6:.1f} µs/event, Redis {redis_cpu / run.events * 1e6:.1f}"
            f" µs/event = {redis_cpu / max(run.leads_written, 1) * 1e6:.1f} µs/lead; µs/event {stages}"
        )

    def cluster(self) -> None:
        """The full pipeline with the store on a local three-master Redis Cluster, beside the one-Redis run."""
        limit = self.sizes.pipeline_max_seconds
        workdir = self.workdir / "redis-cluster"
        with start_redis_cluster(workdir=workdir) as cluster:
            settings = self.settings(redis_url=cluster.url).model_copy(update={"redis_cluster": True})
            pids = [node.process.pid for node in cluster.nodes if node.process is not None]
            before = sum(cpu_seconds(pid) for pid in pids if pid is not None)
            run = bounded(full_pipeline(self.backlog(), settings, max_seconds=limit), limit + 120)
            redis_cpu = sum(cpu_seconds(pid) for pid in pids if pid is not None) - before
            if run.complete:
                self.check_stored_counts(cluster.url, cluster=True)
            self.results.add("cluster_listing_ms", bounded(listing_page_ms(cluster.url, cluster=True), 60))
        self.results.add("cluster_eps", run.rate)
        self.results.add("cluster_redis_us", redis_cpu / run.events * 1e6)
        redis_us = redis_cpu / run.events * 1e6
        say(f"  full pipeline on a Redis Cluster {run.rate:,.0f} events/s, Redis {redis_us:.1f} µs/event")

    def reasons(self) -> None:
        """The full pipeline again with reason codes in segment-change events: the cost of turning them on."""
        limit = self.sizes.pipeline_max_seconds / 2
        settings = self.settings(change_reasons=CHANGE_REASONS)
        run = bounded(full_pipeline(self.backlog(), settings, max_seconds=limit), limit + 120)
        self.results.add("reasons_eps", run.rate)
        say(f"  full pipeline with change reasons {run.rate:,.0f} events/s ({run.events:,} events)")

    def check_stored_counts(
        self, redis_url: str | None = None, *, cluster: bool = False, workload: Workload | None = None
    ) -> None:
        """The pipeline must really have applied every event: compare a sample of leads with the workload."""
        workload = workload or self.workload
        assert workload is not None
        sample = random.Random(SEED).sample(workload.lead_ids, min(CHECKED_LEADS, len(workload.lead_ids)))
        stored = bounded(stored_counts(redis_url or self.redis_url(0), sample, cluster=cluster), 60)
        wrong = [lead for lead in sample if stored.get(lead) != dict(workload.counts[lead])]
        if wrong:
            raise AssertionError(
                f"{len(wrong)} of {len(sample)} sampled leads have stored event counts that differ from the "
                f"events produced (e.g. {wrong[0]}: stored {stored.get(wrong[0])}, "
                f"produced {dict(workload.counts[wrong[0]])}): the figure would not be of the full work"
            )

    def baseline(self) -> None:
        backlog = self.backlog(self.sizes.baseline_events)
        rate = bounded(one_at_a_time(backlog, self.settings()), CONSUME_LIMIT_SECONDS)
        self.results.add("baseline_eps", rate)
        say(f"  one at a time {rate:,.0f} events/s ({backlog.events:,} events)")

    def profile(self) -> None:
        """cProfile over the spread workload (the hot-path issue's shape: nearly one event per lead per batch)."""
        assert self.spread_workload is not None
        events = min(self.sizes.profile_events, self.spread_workload.size)
        profiler = cProfile.Profile()
        limit = self.sizes.profile_max_seconds
        backlog = Backlog(self.bootstrap, self.spread_topic, PARTITIONS, events, self.redis_url(0))
        settings = self.settings().model_copy(update={"events_topic": self.spread_topic})
        run = bounded(full_pipeline(backlog, settings, max_seconds=limit, profiler=profiler), limit + 120)
        text = profile_report(profiler, run)
        path = self.out_dir / "profile.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        profiler.dump_stats(self.workdir / "pipeline.prof")
        say(f"  profile of {run.events:,} events ({run.rate:,.0f} events/s under cProfile) in {path}")

    def api(self) -> None:
        assert self.workload is not None
        sizes = self.sizes
        # Only leads that are stored: a capped pipeline run leaves some of the workload's leads unseen.
        stored_leads = self.populate()
        leads_file = self.workdir / "leads.txt"
        leads_file.write_text("\n".join(stored_leads) + "\n")
        script = api_bench.write_leads_script(self.workdir)
        if api_bench.wrk_binary() is None:
            note = f"wrk missing, max rates come from the Python client (lower bounds): {api_bench.INSTALL_HINT}"
            self.results.note(note)
        env = bench_env(self.redis_url(0), self.bootstrap, bench_names(f"{self.tag}-api"), PARTITIONS)
        process, port = start_api(env, self.workdir / "services", "api")
        try:
            api_bench.max_rate(port, 2, leads_file=leads_file, script=script)  # warm-up, not recorded
            for repeat in range(self.repeats):
                saturated = api_bench.max_rate(port, sizes.api_seconds, leads_file=leads_file, script=script)
                healthz, leads = saturated["healthz"], saturated["leads"]
                errors = leads["non_2xx"] + leads["socket_errors"] + healthz["non_2xx"] + healthz["socket_errors"]
                if errors:
                    self.results.note(f"api repeat {repeat + 1}: {errors} non-2xx answers or socket errors")
                paced = api_bench.run_loadgen(
                    port,
                    rate=leads["rps"] / 2,
                    seconds=sizes.paced_seconds,
                    connections=PACED_CONNECTIONS,
                    leads_file=leads_file,
                )
                if paced["errors"] or set(paced["statuses"]) != {"200"}:
                    self.results.note(f"api paced repeat {repeat + 1}: statuses {paced['statuses']}")
                explained = api_bench.run_loadgen(
                    port,
                    rate=100,
                    seconds=sizes.paced_seconds,
                    connections=PACED_CONNECTIONS,
                    leads_file=leads_file,
                    reasons=True,
                )
                self.results.add("api_reasons_p50_ms", explained["p50_ms"])
                self.results.add("api_healthz_rps", healthz["rps"])
                self.results.add("api_leads_rps", leads["rps"])
                self.results.add("api_paced_rate", paced["achieved_rate"])
                self.results.add("api_paced_p50_ms", paced["p50_ms"])
                self.results.add("api_paced_p99_ms", paced["p99_ms"])
                self.results.detail("api", {"healthz": healthz, "leads": leads, "paced": paced})
                say(
                    f"  api {repeat + 1}/{self.repeats}: /healthz {healthz['rps']:,.0f}/s, "
                    f"/leads {leads['rps']:,.0f}/s; paced {paced['achieved_rate']:,.0f}/s "
                    f"p50 {paced['p50_ms']:.2f} ms p99 {paced['p99_ms']:.2f} ms"
                )
        finally:
            _stop(process)

    def freshness(self) -> None:
        # A broker of its own: the one holding the backlogs of the other measurements spends more CPU per
        # request as its in-memory log grows, on the cores the measured processes share.
        with start_broker(workdir=self.workdir / "broker-fresh") as broker:
            assert broker.process is not None
            self.measure_freshness(broker.bootstrap_servers, broker.process.pid)

    def measure_freshness(self, bootstrap: str, broker_pid: int | None) -> None:
        sizes = self.sizes
        plan = FreshnessPlan(
            rate=sizes.freshness_rate,
            warmup_seconds=sizes.freshness_warmup,
            seconds=sizes.freshness_seconds,
            probe_interval=0.04,
            max_in_flight=8,
        )
        sustained = dataclasses.replace(plan, rate=SUSTAINED_RATE)
        per_window = int(plan.rate * (plan.warmup_seconds + plan.seconds)) + 1
        sustained_window = int(sustained.rate * (plan.warmup_seconds + plan.seconds)) + 1
        # Its own events (another seed: event ids never seen by the consumer's empty database).
        stream = generate(sustained_window + per_window * self.repeats, sizes.leads, seed=SEED + 1).messages
        first, stream = stream[:sustained_window], stream[sustained_window:]
        names = bench_names(f"{self.tag}-fresh")
        bounded(ensure_topics(bootstrap, [names.events_topic], PARTITIONS, 1), 60)
        bounded(_flush(self.redis_url(1)), 60)
        env = bench_env(self.redis_url(1), bootstrap, names, PARTITIONS)
        metrics_port = free_port()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        consumer = start_consumer(env, self.workdir / "services", "consumer-fresh", metrics_port)
        api: LocalProcess | None = None
        try:
            api, port = start_api(env, self.workdir / "services", "api-fresh")
            probes = ProbeSource(self.tag)
            joined = bounded(wait_until_scoring(bootstrap, names.events_topic, port, probes), 90)
            say(f"  consumer scoring after {joined:.1f} s (group join)")
            totals = batch_totals(metrics_url)
            result = bounded(
                measure_window(bootstrap, names.events_topic, port, first, sustained, probes),
                plan.warmup_seconds + plan.seconds + 60,
            )
            # The consumer's own batch stages during the window: where a probe's time goes on its side.
            batches = per_batch(totals, batch_totals(metrics_url))
            self.results.add_from(result, SUSTAINED_FRESHNESS_FIGURES)
            self.results.detail("freshness_sustained", {**result, "consumer_batch_ms": batches})
            stages = ", ".join(
                f"{k} {v:.1f}" for k, v in sorted(batches.items(), key=lambda kv: _stage_order(kv[0])) if k != "events"
            )
            say(
                f"  freshness at {sustained.rate:,.0f} events/s: p50 {result['p50_ms']:.1f} ms, "
                f"p99 {result['p99_ms']:.1f} ms ({result['probes']} probes); the consumer's batches: "
                f"{batches.get('events', 0):.1f} events, ms each: {stages}"
            )
            for repeat in range(self.repeats):
                if repeat and not self.results.figures["fresh_probes"].values[-1]:
                    self.results.note(
                        "freshness: no probe became readable within 5 s in a window (the consumer is behind "
                        "the 5,000 events/s), so the remaining windows were skipped"
                    )
                    break
                window = stream[repeat * per_window : (repeat + 1) * per_window]
                assert self.redis is not None and self.redis.process is not None
                meter = CpuMeter(
                    {
                        "consumer": consumer.pid,
                        "api": api.pid,
                        "broker": broker_pid,
                        "redis": self.redis.process.pid,
                        "load": os.getpid(),
                    }
                )
                result = bounded(
                    measure_window(bootstrap, names.events_topic, port, window, plan, probes),
                    plan.warmup_seconds + plan.seconds + 60,
                )
                for process, share in meter.shares().items():
                    self.results.add(f"fresh_cpu_{process}", share)
                if not consumer.running:
                    raise RuntimeError(f"the consumer exited during the window:\n{consumer.log_tail()}")
                self.results.add_from(result, FRESHNESS_FIGURES)
                self.results.detail("freshness", result)
                say(
                    f"  freshness {repeat + 1}/{self.repeats}: p50 {result['p50_ms']:.1f} ms, "
                    f"p99 {result['p99_ms']:.1f} ms ({result['probes']} probes, {result['probe_timeouts']} timed "
                    f"out, {result['background_rate']:,.0f} events/s background)"
                )
        finally:
            _stop(consumer)
            if api is not None:
                _stop(api)

    def memory(self) -> None:
        assert self.workload is not None
        sizes = self.sizes
        with start_redis(workdir=self.workdir / "redis-memory") as server:
            for repeat in range(MEMORY_REPEATS):
                result = bounded(
                    memory_per_lead(
                        # FLUSHALL of a million leads can outlast the service's 2 s command timeout.
                        self.settings(redis_url=server.url).model_copy(update={"redis_timeout_seconds": 60.0}),
                        self.workload.messages,
                        leads=sizes.memory_leads,
                        pool_size=sizes.memory_pool,
                        sample=sizes.memory_sample,
                    ),
                    600,
                )
                self.results.add_from(result, MEMORY_FIGURES)
                self.results.detail("memory", result)
                say(
                    f"  memory {repeat + 1}/{MEMORY_REPEATS}: {result['used_memory_per_lead']:,.0f} bytes/lead over "
                    f"{result['leads']:,} leads (key {result['memory_usage_median']:,.0f}, value "
                    f"{result['value_bytes_mean']:,.0f}, segment sets {result['segment_sets_per_lead']:,.0f})"
                )


def bounded(coroutine: Coroutine[Any, Any, T], seconds: float) -> T:
    """The service's event loop (uvloop), with a time limit: no measurement can hang the benchmark."""
    return run_async(asyncio.wait_for(coroutine, seconds))


def _stage_order(stage: str) -> int:
    return WORKER_STAGES.index(stage) if stage in WORKER_STAGES else len(WORKER_STAGES)


def _stage_micros(run: PipelineRun) -> dict[str, float]:
    """Per-event microseconds of each batch stage; `other` is the rest of the wall time (fetch, loop, metrics)."""
    micros = {stage: seconds / run.events * 1e6 for stage, seconds in run.stage_seconds.items()}
    in_line = sum(us for stage, us in micros.items() if stage not in OVERLAPPED_STAGES)
    micros["other"] = run.seconds / run.events * 1e6 - in_line
    return micros


def profile_report(profiler: cProfile.Profile, run: PipelineRun) -> str:
    header = (
        f"cProfile of the full pipeline (in-process ConsumerWorker) over {run.events:,} events, "
        f"{run.batches} batches: {run.rate:,.0f} events/s under the profiler "
        "(cProfile inflates the cost of small Python functions; read shares, not absolute times).\n"
        "Stage µs/event from the worker's histograms during this run: "
        + ", ".join(f"{k} {v:.1f}" for k, v in _stage_micros(run).items())
        + "\n"
    )
    sections = [header]
    for order, title in (("tottime", "self time (tottime)"), ("cumulative", "cumulative time")):
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer)
        stats.sort_stats(order).print_stats(PROFILE_TOP)
        body = buffer.getvalue()
        # pstats starts with the profile's totals; keep from the column header on.
        start = body.find("   ncalls")
        sections.append(f"\n=== top {PROFILE_TOP} by {title} ===\n{body[start:] if start >= 0 else body}")
    return "".join(sections)


async def _flush(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


def _one_line(exc: BaseException) -> str:
    """The exception for a table note: its first line and, for a quoted log or traceback, its last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    return f"{type(exc).__name__}: {text[:300]}"


def preflight() -> str | None:
    """Why the service cannot start here (config or model), or None: checked before any server starts."""
    try:
        settings = Settings()
        load_scorer(settings.model_path, settings.service_config.features)
    except Exception as exc:
        return _one_line(exc)
    return None


def _stop(process: LocalProcess) -> None:
    status = process.stop()
    if status not in (0, None, -15):
        log.warning("%s exited with status %s; log %s", process.name, status, process.log_path)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _broker_version() -> str | None:
    try:
        out = subprocess.run([broker_binary(), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError, RuntimeError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def _redis_version() -> str | None:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="one repeat and small sizes: a smoke run")
    parser.add_argument("--repeats", type=int, help="runs of each measurement (default 3, --quick 1)")
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(MEASUREMENTS)}")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where latest.json/.md and profile.txt go")
    parser.add_argument("--workdir", type=Path, help="server logs and scratch files (default: a new temp dir)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.only:
        chosen = {name.strip() for name in args.only.split(",") if name.strip()}
        unknown = chosen - set(MEASUREMENTS)
        if unknown:
            parser.error(f"unknown measurement(s) {sorted(unknown)}; choose from {', '.join(MEASUREMENTS)}")
        args.only = chosen
    else:
        args.only = set(MEASUREMENTS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight()
    if problem is not None:
        say(f"[bench] the service cannot start with this config and model, so there is nothing to measure: {problem}")
        return 2
    # The service logs partition assignments and the like at INFO; the benchmark's own lines say enough.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="leadscore-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"[bench] logs and scratch files in {workdir}")
    results = Results()
    define_figures(results)
    bench = Bench(args, results, workdir)
    started_at, started = now_iso(), time.monotonic()
    load_before = os.getloadavg()
    if load_before[0] > BUSY_LOAD:
        results.note(
            f"the machine was busy when the run started (1-minute load {load_before[0]:.2f} on "
            f"{os.cpu_count()} cores): other processes share the CPU and the figures may be low"
        )
    with ExitStack() as stack:
        try:
            bench.run(stack)
        except Exception as exc:  # set-up failed (servers, backlog): still write what we know
            traceback.print_exc()
            bench.failed.append("setup")
            results.note(f"set-up failed: {_one_line(exc)}")
    settings = Settings()
    info: dict[str, Any] = {
        "started_at": started_at,
        "finished_at": now_iso(),
        "elapsed_seconds": round(time.monotonic() - started, 1),
        "quick": args.quick,
        "repeats": args.repeats,
        "measurements": sorted(args.only),
        "failed": bench.failed,
        "machine": machine_info(
            {
                "redis-server": _redis_version,
                "wrk": api_bench.wrk_version,
                # Debian (bookworm) does not package wrk2: the paced load comes from bench.loadgen.
                "wrk2": lambda: shutil.which("wrk2"),
                "tansu broker": _broker_version,
            }
        ),
        "model_version": _model_version(settings),
        "settings": {
            "batch_max_records": settings.batch_max_records,
            "batch_timeout_ms": settings.batch_timeout_ms,
            "model_path": str(settings.model_path),
        },
        "sizes": asdict(bench.sizes),
        "workdir": str(workdir),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "leadscore_env": {key: value for key, value in os.environ.items() if key.startswith("LEADSCORE_")},
    }
    if bench.workload is not None:
        info["workload"] = {
            "events": bench.workload.size,
            "leads": len(bench.workload.lead_ids),
            "mean_bytes": bench.workload.mean_bytes,
            "partitions": PARTITIONS,
        }
    json_path, md_path = write(results, info, args.out)
    print(markdown(results, info))
    say(f"[bench] wrote {json_path} and {md_path} in {info['elapsed_seconds']:.0f} s")
    return 1 if bench.failed else 0


def _model_version(settings: Settings) -> str | None:
    try:
        return Scorer.load(settings.model_path).version
    except ModelRefused:
        return None


if __name__ == "__main__":
    sys.exit(main())
