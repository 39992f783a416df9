"""From a lead's state to named feature values (as of a time) and to model input rows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.spec import FeatureSpec
from models.state import DAY_MS, LeadState, decay_factor

HOUR_MS = 3_600_000
FeatureValue = float | str | None


def feature_names(spec: FeatureSpec) -> list[str]:
    """Every feature the spec defines, in model column order."""
    return [
        *(f"{s.name}_decayed" for s in spec.signals),
        *(f"{t}_count" for t in spec.counted_types),
        *(r.name for r in spec.ratios),
        "hours_since_last_event",
        "hours_since_last_high_intent",
        "days_since_first_event",
        "active_days",
        *spec.profile_attributes,
    ]


def feature_values(state: LeadState, at_ms: int, spec: FeatureSpec) -> dict[str, FeatureValue]:
    """Named features of `state` as of `at_ms`; None where a value does not exist yet."""
    values: dict[str, FeatureValue] = {}
    elapsed = max(at_ms - state.anchor_ms, 0)
    for signal in spec.signals:
        raw = state.decayed.get(signal.name, 0.0)
        values[f"{signal.name}_decayed"] = raw * decay_factor(elapsed, signal.half_life_ms) if raw else 0.0
    counts = state.counts
    for event_type in spec.counted_types:
        values[f"{event_type}_count"] = float(counts.get(event_type, 0))
    for ratio in spec.ratios:
        denominator = counts.get(ratio.denominator, 0)
        values[ratio.name] = counts.get(ratio.numerator, 0) / denominator if denominator else None
    has_events = state.anchor_ms > 0
    values["hours_since_last_event"] = elapsed / HOUR_MS if has_events else None
    values["hours_since_last_high_intent"] = (
        max(at_ms - state.last_high_intent_ms, 0) / HOUR_MS if state.last_high_intent_ms else None
    )
    values["days_since_first_event"] = max(at_ms - state.first_event_ms, 0) / DAY_MS if has_events else None
    values["active_days"] = float(_active_days_as_of(state, at_ms, spec.active_days_window))
    for attribute in spec.profile_attributes:
        values[attribute] = state.profile.get(attribute)
    return values


def _active_days_as_of(state: LeadState, at_ms: int, window: int) -> int:
    shift = max(at_ms // DAY_MS - state.anchor_ms // DAY_MS, 0)
    if shift >= window:
        return 0
    return (state.active_days & ((1 << (window - shift)) - 1)).bit_count()


@dataclass(frozen=True)
class FeatureLayout:
    """Column order and category codes of a model's input: categoricals become their vocabulary index."""

    names: tuple[str, ...]
    categories: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        codes = {name: {v: float(i) for i, v in enumerate(vocab)} for name, vocab in self.categories.items()}
        object.__setattr__(self, "_codes", codes)

    @property
    def categorical_names(self) -> list[str]:
        return [n for n in self.names if n in self.categories]

    def encode(self, values_rows: Sequence[Mapping[str, FeatureValue]]) -> np.ndarray:
        """One float64 row per lead; missing values and unseen categories become NaN."""
        codes: dict[str, dict[str, float]] = self._codes  # type: ignore[attr-defined]
        matrix = np.full((len(values_rows), len(self.names)), math.nan)
        for row_index, values in enumerate(values_rows):
            row = matrix[row_index]
            for column, name in enumerate(self.names):
                value = values.get(name)
                if value is None:
                    continue
                if name in codes:
                    row[column] = codes[name].get(str(value), math.nan)
                else:
                    row[column] = float(value)
        return matrix
