"""The model registry over HTTP (admin scope): list, show and activate models, as `leadscore models` does. An
activation records who made it and when; every API and consumer process follows it within
LEADSCORE_MODEL_POLL_SECONDS."""

# No `from __future__ import annotations`: FastAPI resolves the annotations of the routes' parameters.

import math
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from app.api.deps import ServiceDep
from app.api.errors import ERROR_RESPONSES
from app.model_registry import activate
from app.storage.registry import ModelStore
from models.scoring import ModelRefused
from schemas.api import ModelSummary, ModelsView
from schemas.model import ModelMetadata

router = APIRouter()


async def _summary(models: ModelStore, version: str, active: str | None) -> ModelSummary:
    metadata = ModelMetadata.model_validate_json(await models.metadata(version) or b"{}")
    activation = await models.activation(version)
    roc_auc = metadata.metrics.get("roc_auc")
    return ModelSummary(
        version=version,
        active=version == active,
        trained_at=metadata.trained_at,
        roc_auc=None if roc_auc is None or math.isnan(roc_auc) else roc_auc,
        activated_at=None if activation is None else datetime.fromtimestamp(activation[0] / 1000, tz=UTC),
        activated_by=None if activation is None else activation[1],
    )


@router.get("/models", response_model=ModelsView, responses=ERROR_RESPONSES)
async def list_models(service: ServiceDep) -> ModelsView:
    """Every registered model, newest training first, with the active one marked."""
    models = service.store.models
    active = await models.active()
    return ModelsView(active=active, models=[await _summary(models, v, active) for v in await models.versions()])


@router.get("/models/{version}", responses=ERROR_RESPONSES)
async def show_model(version: str, service: ServiceDep) -> dict[str, Any]:
    """A model's metadata (training options, metrics, features), as `leadscore models show` prints it."""
    metadata = await service.store.models.metadata(version)
    if metadata is None:
        raise HTTPException(404, f"no model {version!r}: GET /models lists what is registered")
    shown: dict[str, Any] = ModelMetadata.model_validate_json(metadata).model_dump(mode="json", exclude={"calibration"})
    return shown


@router.post("/models/{version}/activate", response_model=ModelSummary, responses=ERROR_RESPONSES)
async def activate_model(version: str, request: Request, service: ServiceDep) -> ModelSummary:
    """Make a registered model the active one, after checking that it loads and fits the feature config (422 if
    it does not; the current model keeps serving)."""
    models = service.store.models
    if await models.metadata(version) is None:
        raise HTTPException(404, f"no model {version!r}: GET /models lists what is registered")
    client = request.client.host if request.client is not None else "unknown"
    try:
        await activate(models, version, service.config.features, by=f"API ({client})")
    except ModelRefused as refused:
        raise HTTPException(422, str(refused)) from None
    return await _summary(models, version, version)
