"""Model artifact metadata: what a trained model is, what it expects, and how good it was."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Calibration(BaseModel):
    """Isotonic map from the booster's raw probability to a calibrated one (piecewise linear)."""

    model_config = ConfigDict(frozen=True)

    raw: list[float] = Field(min_length=2)
    calibrated: list[float] = Field(min_length=2)


class ModelMetadata(BaseModel):
    model_config = ConfigDict(frozen=True, protected_namespaces=())

    version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    feature_names: list[str] = Field(min_length=1)
    categories: dict[str, list[str]] = Field(default_factory=dict, description="categorical vocabularies")
    config_hash: str
    conversion_type: str
    horizon_days: float = Field(gt=0)
    trained_at: datetime
    training_window_start: datetime
    training_window_end: datetime
    seed: int
    rows: dict[str, int] = Field(default_factory=dict, description="snapshot rows per split")
    metrics: dict[str, float] = Field(default_factory=dict, description="test-split metrics of the model")
    baseline_metrics: dict[str, float] = Field(default_factory=dict, description="points baseline, same split")
    calibration: Calibration | None = None
    training_data: dict[str, int] = Field(
        default_factory=dict, description="event-history counts: events, leads, invalid lines, duplicates, ..."
    )
