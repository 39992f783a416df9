"""Wiring a consumer worker process: settings -> store, model, pipeline, worker, metrics endpoint."""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import start_http_server

from app import metrics
from app.due import DuePlanner
from app.pipeline import ScoringPipeline
from app.settings import Settings
from app.store import LeadStore
from models.scoring import load_scorer

log = logging.getLogger(__name__)


def build_pipeline(settings: Settings, store: LeadStore) -> ScoringPipeline:
    config = settings.service_config
    scorer = load_scorer(settings.model_path, config.features)
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
    )


async def run_consumer(settings: Settings, *, metrics_port: int = 0, metrics_host: str = "127.0.0.1") -> None:
    """Run one consumer worker until SIGTERM or SIGINT, then finish the batch, commit and close."""
    from consumers.worker import ConsumerWorker  # the CLI is the one place allowed to reach into consumers/

    store = LeadStore.from_url(str(settings.redis_url), timeout_seconds=settings.redis_timeout_seconds)
    pipeline = build_pipeline(settings, store)
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host)
        log.info("metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await ConsumerWorker(settings, pipeline).run(stop)
    finally:
        await store.close()
