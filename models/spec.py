"""The feature spec: which signals a lead's state tracks, how fast they decay, which are high intent.

It is read from the `features:` section of the YAML config so a user can bring their own event types
without code changes; the fold, the vectorizer, training and the points baseline all read the same spec.
"""

from __future__ import annotations

import hashlib
import re
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.yaml")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_FEATURE_NAME = r"^[a-z][a-z0-9_]*$"


def parse_duration_ms(value: Any) -> int:
    """'7d', '36h', '90m', '1.5d' or a number of milliseconds -> milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration like '7d', '12h', '30m'")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Signal(_Strict):
    """A behavioural signal: events of `types` (optionally filtered on properties), decayed over time."""

    name: str = Field(pattern=_FEATURE_NAME)
    types: tuple[str, ...] = Field(min_length=1)
    where: dict[str, str] = Field(default_factory=dict, description="property equality filter")
    half_life_ms: int = Field(gt=0)
    points: float = Field(default=0.0, description="weight in the classic points-based score")

    @model_validator(mode="before")
    @classmethod
    def _half_life(cls, data: Any) -> Any:
        if isinstance(data, dict) and "half_life" in data:
            data = dict(data)
            data["half_life_ms"] = parse_duration_ms(data.pop("half_life"))
        return data


class SignalMatcher(NamedTuple):
    """One signal an event type may feed, as the fold reads it."""

    name: str
    half_life_ms: int
    where: tuple[tuple[str, str], ...]  # property equality filter
    high_intent: bool

    def matches(self, properties: dict[str, Any]) -> bool:
        return all(str(properties.get(key)) == value for key, value in self.where)


class Ratio(_Strict):
    """A lifetime ratio of two event-type counts, e.g. email click-through = clicks / sends."""

    name: str = Field(pattern=_FEATURE_NAME)
    numerator: str
    denominator: str


class FeatureSpec(_Strict):
    signals: tuple[Signal, ...] = Field(min_length=1)
    counted_types: tuple[str, ...] = Field(description="event types whose lifetime counts are features")
    ratios: tuple[Ratio, ...] = ()
    high_intent: tuple[str, ...] = Field(description="signal names whose events count as high intent")
    profile_attributes: tuple[str, ...] = Field(description="profile attributes used as categorical features")
    conversion_type: str = "converted"
    profile_type: str = "profile_update"
    active_days_window: int = Field(default=30, ge=1, le=120)

    @field_validator("signals")
    @classmethod
    def _unique_signals(cls, signals: tuple[Signal, ...]) -> tuple[Signal, ...]:
        names = [s.name for s in signals]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"signal names must be unique; repeated: {duplicated}")
        return signals

    @model_validator(mode="after")
    def _references_exist(self) -> FeatureSpec:
        unknown = sorted(set(self.high_intent) - {s.name for s in self.signals})
        if unknown:
            raise ValueError(f"high_intent names unknown signals: {unknown}")
        return self

    @cached_property
    def signals_by_type(self) -> dict[str, tuple[Signal, ...]]:
        """Event type -> the signals it may feed (the fold's lookup table)."""
        table: dict[str, list[Signal]] = {}
        for signal in self.signals:
            for event_type in signal.types:
                table.setdefault(event_type, []).append(signal)
        return {k: tuple(v) for k, v in table.items()}

    @cached_property
    def feature_names(self) -> tuple[str, ...]:
        """Every feature this spec defines, in model column order (models.vector computes them)."""
        return (
            *(f"{s.name}_decayed" for s in self.signals),
            *(f"{t}_count" for t in self.counted_types),
            *(r.name for r in self.ratios),
            "hours_since_last_event",
            "hours_since_last_high_intent",
            "days_since_first_event",
            "active_days",
            *self.profile_attributes,
        )

    @cached_property
    def high_intent_names(self) -> frozenset[str]:
        return frozenset(self.high_intent)

    @cached_property
    def matchers_by_type(self) -> dict[str, tuple[SignalMatcher, ...]]:
        """`signals_by_type` compiled for the fold: plain tuples, no model attribute lookups per event."""
        return {
            event_type: tuple(
                SignalMatcher(s.name, s.half_life_ms, tuple(s.where.items()), s.name in self.high_intent_names)
                for s in signals
            )
            for event_type, signals in self.signals_by_type.items()
        }

    @cached_property
    def half_life_by_signal(self) -> dict[str, int]:
        return {s.name: s.half_life_ms for s in self.signals}

    @cached_property
    def config_hash(self) -> str:
        """Stable hash of the spec: a model records it so a changed config is noticed."""
        canonical = orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()[:16]


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """The whole YAML config (features + segments) as a mapping; the shipped default when path is None."""
    source = path or DEFAULT_CONFIG_PATH
    try:
        loaded = yaml.safe_load(source.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {source} does not exist (set LEADSCORE_CONFIG_PATH)") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {source} must be a YAML mapping with 'features' and 'segments'")
    return loaded


def load_feature_spec(path: Path | None = None) -> FeatureSpec:
    config = read_config_file(path)
    if "features" not in config:
        raise ValueError(f"config file {path or DEFAULT_CONFIG_PATH} has no 'features' section")
    return FeatureSpec.model_validate(config["features"])
