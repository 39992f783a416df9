"""Model artifact metadata: what a trained model is, what it expects, and how good it was.

Every field added after the first models were trained has a default, so the metadata of models already in a
registry still loads.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class CalibrationMethod(StrEnum):
    """How a model's raw probability was mapped to the served one."""

    ISOTONIC = "isotonic"  # a non-decreasing step map: flexible, but it ties scores it puts on one step
    SIGMOID = "sigmoid"  # Platt scaling, a logistic on the raw score's logit: strictly increasing, keeps the ranking
    NONE = "none"  # the booster's own probability is served


class Calibration(BaseModel):
    """The map from the booster's raw probability to a calibrated one, as knots interpolated linearly.

    Isotonic maps are exactly piecewise linear. A sigmoid is sampled densely enough on the logit scale that
    interpolating its knots reproduces it to within 1e-6, so serving applies every method the same way.
    """

    model_config = ConfigDict(frozen=True)

    method: CalibrationMethod = CalibrationMethod.ISOTONIC  # the only method before this field existed
    raw: list[float] = Field(min_length=2)
    calibrated: list[float] = Field(min_length=2)


class CalibrationSelection(BaseModel):
    """How the calibration was chosen on the validation split, with the figures that decided it."""

    model_config = ConfigDict(frozen=True)

    requested: str = Field(description="the training option: auto, isotonic, sigmoid or none")
    method: CalibrationMethod
    tolerance: float = Field(description="validation ROC-AUC and PR-AUC a calibration may lose and be chosen by auto")
    valid_roc_auc_uncalibrated: float
    valid_roc_auc: float = Field(description="cross-fitted validation ROC-AUC of the chosen calibration")
    candidates: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="per method, cross-fitted on validation: ROC-AUC and PR-AUC with the mean loss and its standard"
        " error (valid_roc_auc, valid_roc_auc_lost, valid_roc_auc_lost_se, valid_pr_auc, ...), valid_log_loss, and"
        " the distinct_values the map gives the validation rows",
    )


class WarningKind(StrEnum):
    SMALL_DATA = "small_data"  # too few positives for the metrics to mean much
    BASELINE_UPSIDE_DOWN = "baseline_upside_down"  # a baseline ranks worse than chance
    NOT_BETTER_THAN_BASELINE = "not_better_than_baseline"
    DOMINANT_FEATURE = "dominant_feature"  # one feature takes most of the gain: a leak or a proxy
    CALIBRATION_LOST_RANKING = "calibration_lost_ranking"


class TrainingWarning(BaseModel):
    """Something about a trained model that its metrics alone would hide; shown in the report and by train."""

    model_config = ConfigDict(frozen=True)

    kind: WarningKind
    title: str = Field(description="a few words, for one-line summaries")
    message: str


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
    positives: dict[str, int] = Field(default_factory=dict, description="snapshots that converted, per split")
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="test-split metrics of the served model (`*_uncalibrated`: the booster's own probability;"
        " `*_ci_low`/`*_ci_high`: bootstrap confidence interval)",
    )
    baseline_metrics: dict[str, float] = Field(default_factory=dict, description="points baseline, same split")
    logistic_baseline_metrics: dict[str, float] = Field(
        default_factory=dict, description="logistic regression on the same features, same split"
    )
    calibration: Calibration | None = None
    calibration_selection: CalibrationSelection | None = None
    warnings: list[TrainingWarning] = Field(default_factory=list)
    training_settings: dict[str, str | int | float | None] = Field(
        default_factory=dict, description="how the snapshots were taken and split (split, window, horizon, ...)"
    )
    training_data: dict[str, int] = Field(
        default_factory=dict, description="event-history counts: events, leads, invalid lines, duplicates, ..."
    )
