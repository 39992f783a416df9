"""The `training:` section of the YAML config: how training samples, splits and calibrates (all optional).

`leadscore train` starts from this section and applies its command-line flags on top; a config without the
section trains with the defaults below.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from models.spec import ConfigDocument, ConfigProblem, parse_duration_ms

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


class SplitMethod(StrEnum):
    """How snapshot rows are divided into train, validation and test."""

    TIME = "time"  # by snapshot time: the model is judged on a later period than it learnt from
    LEAD = "lead"  # by a hash of the lead id: every row of a lead lands in the same split


class CalibrationPolicy(StrEnum):
    """Which calibration training fits on the validation split."""

    AUTO = "auto"  # the better-calibrated of isotonic and sigmoid among those that keep the ranking
    ISOTONIC = "isotonic"
    SIGMOID = "sigmoid"
    NONE = "none"


def parse_instant(value: Any) -> datetime:
    """An RFC 3339 time or a date (midnight UTC); a time without an offset is UTC."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = datetime.fromisoformat(text) if "T" in text or " " in text else date.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a date (2026-09-01) or an RFC 3339 time (2026-09-01T00:00:00Z)"
            ) from None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, date):  # YAML reads an unquoted 2026-09-01 as a date
        return datetime.combine(value, time(), tzinfo=UTC)
    raise ValueError(f"{value!r} is not a date (2026-09-01) or an RFC 3339 time (2026-09-01T00:00:00Z)")


class TrainingSpec(BaseModel):
    """What `leadscore train` does with an event history, as written in the config's `training:` section."""

    # The durations are written `horizon` and `snapshot_every` (aliases, so an error names the key written).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)
    # field name -> the key a config file writes for it (models.spec reads this for its messages)
    config_keys: ClassVar[Mapping[str, str]] = {"horizon_ms": "horizon", "snapshot_every_ms": "snapshot_every"}

    horizon_ms: int = Field(
        default=30 * DAY_MS, alias="horizon", description="a conversion within this long after t is a positive"
    )
    snapshot_every_ms: int = Field(
        default=7 * DAY_MS, alias="snapshot_every", description="spacing of a lead's candidate snapshot times"
    )
    max_snapshots_per_lead: int = Field(
        default=6, ge=1, description="snapshots sampled per lead at most, so long-lived leads don't dominate"
    )
    window_start: datetime | None = Field(default=None, description="no snapshot before this time")
    window_end: datetime | None = Field(default=None, description="no snapshot at or after this time")
    split: SplitMethod = SplitMethod.TIME
    valid_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_fraction: float = Field(default=0.15, gt=0, lt=1)
    # A floor, not a recommendation: with 10 positives a split's ROC-AUC has a standard error near 0.09, so
    # below it a split's metrics say nothing; under 100 the report warns instead (models.evaluation).
    min_positives: int = Field(
        default=10, ge=1, description="training refuses to run when a split has fewer converting snapshots"
    )
    calibration: CalibrationPolicy = CalibrationPolicy.AUTO

    @model_validator(mode="before")
    @classmethod
    def _days(cls, data: Any) -> Any:
        """`horizon_days: 30` for `horizon: 30d` (likewise `snapshot_every_days`), not both."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("horizon", "snapshot_every"):
            days_key = f"{key}_days"
            if days_key not in data:
                continue
            if key in data:
                raise ValueError(f"write either {key!r} or {days_key!r}, not both")
            days = data.pop(days_key)
            if isinstance(days, bool) or not isinstance(days, int | float) or days <= 0:
                raise ValueError(f"{days_key} is a positive number of days; got {days!r}")
            data[key] = int(days * DAY_MS)
        return data

    @field_validator("horizon_ms", "snapshot_every_ms", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int:
        milliseconds = parse_duration_ms(value)
        # A bare number is milliseconds (as for half-lives): `horizon: 30` would be 30 ms, never what is meant.
        if milliseconds < HOUR_MS:
            raise ValueError(f"{value!r} is {milliseconds} ms; write a duration like '30d' or '12h'")
        return milliseconds

    @field_validator("window_start", "window_end", mode="before")
    @classmethod
    def _instant(cls, value: Any) -> Any:
        return None if value is None else parse_instant(value)

    @field_validator("window_end")
    @classmethod
    def _window_ends_after_it_starts(cls, end: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("window_start")
        if end is not None and start is not None and end <= start:
            raise ValueError(f"window_end {end.isoformat()} is not after window_start {start.isoformat()}")
        return end

    @field_validator("test_fraction")
    @classmethod
    def _rows_left_to_train_on(cls, test: float, info: ValidationInfo) -> float:
        valid = info.data.get("valid_fraction")
        if valid is not None and valid + test >= 1:
            raise ValueError(f"valid_fraction {valid:g} + test_fraction {test:g} leave no rows to train on")
        return test

    @property
    def horizon_days(self) -> float:
        return self.horizon_ms / DAY_MS

    @property
    def snapshot_every_days(self) -> float:
        return self.snapshot_every_ms / DAY_MS


def check_training(document: ConfigDocument) -> tuple[TrainingSpec | None, list[ConfigProblem]]:
    """The `training` section as a TrainingSpec (the defaults when there is none; None if it does not validate)
    and its problems, each at the line of its entry."""
    section = document.data.get("training")
    if section is None:  # absent, or `training:` with nothing under it
        return TrainingSpec(), []
    if not isinstance(section, dict):
        return None, [document.error(("training",), "training: a mapping of training options (see the README)")]
    try:
        return TrainingSpec.model_validate(section), []
    except ValidationError as exc:
        return None, document.validation_problems(exc, TrainingSpec, ("training",))
