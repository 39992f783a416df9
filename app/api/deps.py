"""What the routes depend on: the service state the lifespan opens, as `Annotated` dependency aliases."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Protocol

from fastapi import Depends, Request

from app.api.documents import features_of
from app.domain.lead import LeadRecord
from app.eventloop import PerTurn
from app.settings import ServiceConfig, Settings
from app.storage.leads import LeadStore
from models.scoring import Scorer
from models.vector import FeatureValue
from schemas.api import IngestResult
from schemas.events import ErasureRequest


class EventSink(Protocol):
    """Where `POST /events` hands events and `DELETE /leads/{id}` erasure requests (consumers.ingest.EventIngest,
    wired by the CLI): raises a ConnectionError when the broker does not take them."""

    async def submit(self, items: Sequence[object]) -> list[IngestResult]: ...

    async def request_erasure(self, request: ErasureRequest) -> None: ...

    async def stop(self) -> None: ...


class ServiceState:
    """What the lifespan opens: the store, the loaded model and the config, and the task that keeps the model
    the registry's active one."""

    def __init__(
        self,
        settings: Settings,
        store: LeadStore,
        scorer: Scorer,
        config: ServiceConfig,
        events: EventSink | None = None,
    ) -> None:
        self.settings = settings
        self.events = events
        self.store = store
        self.scorer = scorer
        self.config = config
        self.model_watch: asyncio.Task[None] | None = None
        # The features of the leads read in one event-loop turn, computed in one batch: a batch's fixed cost
        # (tens of microseconds) is shared by the requests a busy API answers together.
        self.features = PerTurn(self._features_of)

    async def _features_of(self, records: list[LeadRecord]) -> list[dict[str, FeatureValue]]:
        return features_of(records, self.config)

    def serve_model(self, scorer: Scorer) -> None:
        """Serve `scorer` from the next request on: the registry watcher's hot swap."""
        self.scorer = scorer

    @property
    def model_serving(self) -> bool:
        """A model is loaded (the lifespan does not start without one) and still follows the registry: a watcher
        that ended would leave this process on its model while every other one moves to the next."""
        return self.model_watch is not None and not self.model_watch.done()


# The dependencies are async: FastAPI runs a plain `def` dependency in a worker thread, on every request.
async def get_service(request: Request) -> ServiceState:
    service: ServiceState = request.app.state.service
    return service


ServiceDep = Annotated[ServiceState, Depends(get_service)]


async def get_store(service: ServiceDep) -> LeadStore:
    return service.store


async def get_config(service: ServiceDep) -> ServiceConfig:
    return service.config


StoreDep = Annotated[LeadStore, Depends(get_store)]
ConfigDep = Annotated[ServiceConfig, Depends(get_config)]
