"""The model registry over HTTP (admin scope): list, show and activate models, as `leadscore models` does. An
activation records who made it and when; every API and consumer process follows it within
LEADSCORE_MODEL_POLL_SECONDS. The model serving, with its evaluation report and plots, is readable by all
(`/model`: the read scope)."""

# No `from __future__ import annotations`: FastAPI resolves the annotations of the routes' parameters.

import math
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from app.api.deps import ServiceDep
from app.api.errors import ERROR_RESPONSES
from app.model_registry import activate
from app.storage.registry import ModelStore
from models.scoring import ModelRefused
from schemas.api import ActiveModelView, ModelSummary, ModelsView
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


# What the model's files are, by their ending: the report is markdown, the plots PNG.
_MEDIA_TYPES = {".md": "text/markdown; charset=utf-8", ".png": "image/png"}


@router.get("/model", response_model=ActiveModelView, responses=ERROR_RESPONSES)
async def serving_model(service: ServiceDep) -> ActiveModelView:
    """The model this process scores with: version, training time, test metrics, activation, and the names of its
    evaluation report and plots."""
    version = service.scorer.version
    metadata = service.scorer.metadata
    activation = await service.store.models.activation(version)
    return ActiveModelView(
        version=version,
        trained_at=metadata.trained_at,
        activated_at=None if activation is None else datetime.fromtimestamp(activation[0] / 1000, tz=UTC),
        activated_by=None if activation is None else activation[1],
        metrics={name: None if math.isnan(value) else value for name, value in metadata.metrics.items()},
        files=await service.store.models.file_names(version),
    )


@router.get(
    "/model/files/{name}",
    response_class=Response,
    responses=ERROR_RESPONSES | {200: {"content": {"text/markdown": {}, "image/png": {}}}},
)
async def serving_model_file(name: str, service: ServiceDep) -> Response:
    """A file of the serving model's artifact: its evaluation report (report.md) or a plot (roc.png, …)."""
    version = service.scorer.version
    content = await service.store.models.file(version, name)
    media_type = next((kind for ending, kind in _MEDIA_TYPES.items() if name.endswith(ending)), None)
    if content is None or media_type is None:
        raise HTTPException(404, f"model {version} has no file {name!r}: GET /model lists its files")
    return Response(content, media_type=media_type)
