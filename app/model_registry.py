"""Registering, activating and hot-swapping models.

`leadscore models register DIR` stores an artifact in the registry (Redis); `activate VERSION` makes it
the active one after validating it against the feature config. Every running API and consumer process
polls the active version and swaps its scorer within seconds, without a restart; a version that fails
to load or does not fit the config is refused, logged, and the previous model keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from app import metrics
from app.settings import Settings
from app.storage.errors import STORE_UNAVAILABLE
from app.storage.leads import LeadStore
from app.storage.registry import ModelStore
from models.scoring import METADATA_FILE, MODEL_FILE, REPORT_FILE, ModelRefused, Scorer, load_scorer
from models.spec import FeatureSpec

log = logging.getLogger(__name__)


async def register_artifact(models: ModelStore, directory: Path, spec: FeatureSpec) -> Scorer:
    """Validate an artifact directory against the config and store it in the registry, with its evaluation report
    and plots when it has them."""
    scorer = Scorer.load(directory)
    scorer.check_compatible(spec)
    await models.register(
        scorer.version,
        (directory / MODEL_FILE).read_text(),
        (directory / METADATA_FILE).read_bytes(),
        int(scorer.metadata.trained_at.timestamp() * 1000),
        files=_shown_files(directory),
    )
    return scorer


def _shown_files(directory: Path) -> dict[str, bytes]:
    """The artifact's files for people: the evaluation report and its plots (small: tens of KB each)."""
    shown = [directory / REPORT_FILE, *sorted(directory.glob("*.png"))]
    return {path.name: path.read_bytes() for path in shown if path.is_file()}


async def load_version(models: ModelStore, version: str, spec: FeatureSpec) -> Scorer:
    stored = await models.get(version)
    if stored is None:
        raise ModelRefused(f"model {version!r} is not registered; `leadscore models list` shows what is")
    scorer = Scorer.from_texts(stored.model_text, stored.metadata_json, origin=f"model {version}")
    scorer.check_compatible(spec)
    return scorer


async def activate(models: ModelStore, version: str, spec: FeatureSpec, by: str = "") -> Scorer:
    """Make `version` the active model, after checking that it loads and fits the config; `by` is recorded."""
    scorer = await load_version(models, version, spec)
    await models.activate(version, by)
    return scorer


class ActiveModelWatcher:
    """Polls the registry's active version and hands a validated new scorer to `swap`."""

    def __init__(
        self,
        models: ModelStore,
        spec: FeatureSpec,
        current: str,
        swap: Callable[[Scorer], None],
        poll_seconds: float,
        *,
        prepare: Callable[[Scorer], Awaitable[None]] | None = None,
    ) -> None:
        self.models = models
        self.prepare = prepare  # e.g. compiling: done before the swap, the old model serves meanwhile
        self.spec = spec
        self.current = current
        self.swap = swap
        self.poll_seconds = poll_seconds
        self._refused: str | None = None

    async def check_once(self) -> None:
        version = await self.models.active()
        if version is None or version in (self.current, self._refused):
            return
        try:
            scorer = await load_version(self.models, version, self.spec)
        except ModelRefused as exc:
            self._refused = version  # say it once, keep serving the current model
            metrics.MODEL_LOAD_FAILURES.inc()
            log.error("active model %s refused, still serving %s: %s", version, self.current, exc)
            return
        if self.prepare is not None:
            await self.prepare(scorer)
        self.swap(scorer)
        self.current = version
        metrics.MODEL_INFO.info({"version": scorer.version, "config_hash": scorer.metadata.config_hash})
        log.info("now serving model %s", version)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check_once()
            except STORE_UNAVAILABLE as exc:
                log.warning("cannot read the active model version (%s); will retry", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.poll_seconds)


async def active_scorer(settings: Settings, store: LeadStore) -> Scorer:
    """The model to start with: the registry's active one. On first start (a registry without an active model)
    the model at LEADSCORE_MODEL_PATH is registered and made active, so the registry, every process and
    `leadscore models` agree on what serves.

    Raises ModelRefused for a model that does not fit the config. With Redis unreachable at start-up the
    file model serves, and the watcher switches to the registry's choice once Redis answers.
    """
    config = settings.service_config
    models = store.models
    try:
        version = await models.active()
        if version is None:
            scorer = await register_artifact(models, settings.model_path, config.features)
            if await models.activate_if_none(scorer.version):
                log.info("registered %s (%s) and made it the active model", scorer.version, settings.model_path)
                return scorer
            version = await models.active()  # another process won the race: its choice serves
    except STORE_UNAVAILABLE as exc:
        log.warning(
            "cannot read the active model from Redis (%s: %s); starting with %s",
            type(exc).__name__,
            exc,
            settings.model_path,
        )
        return load_scorer(settings.model_path, config.features)
    if version is None:  # activated and removed in between: nothing else to go by
        return load_scorer(settings.model_path, config.features)
    return await load_version(models, version, config.features)
