"""Wiring a consumer worker process: settings -> store, model, pipeline, worker, metrics endpoint."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from tqdm import tqdm

from app import metrics
from app.domain.schedule import DuePlanner
from app.model_registry import ActiveModelWatcher, active_scorer
from app.pipeline import ScoringPipeline
from app.ports import ensure_port_free
from app.settings import Settings
from app.storage.leads import LeadStore, open_store
from models.scoring import Scorer

log = logging.getLogger(__name__)


def build_pipeline(settings: Settings, store: LeadStore, scorer: Scorer) -> ScoringPipeline:
    config = settings.service_config
    metrics.MODEL_INFO.info({"version": scorer.version, "config_hash": scorer.metadata.config_hash})
    planner = DuePlanner(
        config.features, config.segments, int(settings.staleness_seconds * 1000), settings.active_epsilon
    )
    return ScoringPipeline(
        store,
        scorer,
        config.features,
        config.segments,
        planner=planner,
        change_reasons=settings.change_reasons,
        dedupe_window=settings.dedupe_window,
        history_min_delta=settings.history_min_delta,
    )


async def run_consumer(settings: Settings, *, metrics_port: int = 0, metrics_host: str = "127.0.0.1") -> None:
    """Run one consumer worker until SIGTERM or SIGINT, then finish the batch, commit and close.

    With a metrics port, that port also answers /healthz and /readyz (consumers/status_server.py).
    """
    # The CLI's runtime is the one place allowed to reach into consumers/.
    from consumers.progress import ConsumerProgress
    from consumers.status_server import StatusServer
    from consumers.worker import ConsumerWorker

    progress = ConsumerProgress(settings.stall_seconds, settings.wedged_seconds)
    # The port first: a port in use fails at once, before seconds of model loading and compiling.
    status = None
    if metrics_port:
        ensure_port_free(metrics_host, metrics_port, what="the consumer's metrics and checks", option="--metrics-port")
        status = StatusServer(progress, metrics_host, metrics_port)
        log.info("metrics, health and readiness on http://%s:%d/{metrics,healthz,readyz}", metrics_host, metrics_port)
    store = open_store(settings)
    try:
        pipeline = build_pipeline(settings, store, await pipeline_scorer(settings, store))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        def swap(scorer: Scorer) -> None:
            pipeline.scorer = scorer  # the next batch is scored with it (and the checks report it)

        watcher = ActiveModelWatcher(
            store.models,
            pipeline.spec,
            pipeline.scorer.version,
            swap,
            settings.model_poll_seconds,
            prepare=lambda scorer: compile_model(scorer, settings),
        )
        watching = asyncio.create_task(watcher.run(stop))
        try:
            await ConsumerWorker(settings, pipeline, progress).run(stop)
        finally:
            stop.set()
            await watching
    finally:
        await store.close()
        if status is not None:
            status.close()


async def run_webhooks(settings: Settings, *, metrics_port: int = 0, metrics_host: str = "127.0.0.1") -> None:
    """Deliver segment changes to every subscription of LEADSCORE_WEBHOOKS until SIGTERM or SIGINT, then let the
    attempts in flight finish, commit and close. With a metrics port: /metrics, /healthz and /readyz there."""
    from consumers.progress import ConsumerProgress
    from consumers.status_server import StatusServer
    from consumers.webhooks import WebhookService

    progress = ConsumerProgress(settings.stall_seconds, settings.wedged_seconds)
    service = WebhookService(settings, progress)  # no subscriptions: refused before anything starts
    status = None
    if metrics_port:
        ensure_port_free(metrics_host, metrics_port, what="the webhooks' metrics and checks", option="--metrics-port")
        status = StatusServer(progress, metrics_host, metrics_port)
        log.info("metrics, health and readiness on http://%s:%d/{metrics,healthz,readyz}", metrics_host, metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await service.run(stop)
    finally:
        if status is not None:
            status.close()


async def pipeline_scorer(settings: Settings, store: LeadStore) -> Scorer:
    """The active model, compiled for batched scoring (consumers, rescoring, the benchmark)."""
    scorer = await active_scorer(settings, store)
    await compile_model(scorer, settings)
    return scorer


async def compile_model(scorer: Scorer, settings: Settings) -> None:
    """Compile the scorer's trees (in a thread: it can take seconds); if that fails, it goes on with LightGBM."""
    if not settings.compiled_model:
        return
    started = time.perf_counter()
    try:
        await asyncio.to_thread(scorer.compile_trees, settings.compiled_model_cache)
    except Exception as exc:
        log.warning(
            "model %s scores with LightGBM, about 8x slower per lead: compiling its trees failed (%s: %s); "
            "install lleaves, or set LEADSCORE_COMPILED_MODEL=false to silence this",
            scorer.version,
            type(exc).__name__,
            exc,
        )
        return
    log.info("model %s compiled to native code in %.1f s", scorer.version, time.perf_counter() - started)


async def run_rescore(settings: Settings, *, batch: int = 1000, progress: bool = True) -> tuple[int, int]:
    """Rescore every stored lead with the active model; segment changes are published as usual.

    Returns (leads rescored, segment changes published). A lead that a consumer writes meanwhile is left
    to the consumer (its write wins), so rescoring never races new events.
    """
    from consumers.producer import SegmentChangePublisher, change_producer  # the one place app/ reaches Kafka

    store = open_store(settings)
    producer = change_producer(settings)
    rescored = changes = 0
    try:
        pipeline = build_pipeline(settings, store, await pipeline_scorer(settings, store))
        await producer.start()
        pipeline.publish = SegmentChangePublisher(producer, settings.segment_changes_topic)
        with tqdm(desc=f"rescoring with {pipeline.scorer.version}", unit=" leads", disable=not progress) as bar:
            async for lead_ids in store.lead_ids(count=batch):
                outcome = await pipeline.rescore(lead_ids)
                rescored += len(outcome.records)
                changes += len(outcome.changes)
                bar.update(len(lead_ids))
    finally:
        await producer.stop()
        await store.close()
    return rescored, changes
