"""From a lead's state to named feature values (as of a time) and to model input rows."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
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
    return dict(zip(feature_names(spec), feature_row(state, at_ms, spec), strict=True))


def feature_row(state: LeadState, at_ms: int, spec: FeatureSpec) -> list[FeatureValue]:
    """The same values as `feature_values`, as a list in `feature_names` order (the scoring hot path)."""
    elapsed = max(at_ms - state.anchor_ms, 0)
    decayed, counts = state.decayed, state.counts
    row: list[FeatureValue] = [
        value * decay_factor(elapsed, signal.half_life_ms) if (value := decayed.get(signal.name, 0.0)) else 0.0
        for signal in spec.signals
    ]
    row += [float(counts.get(event_type, 0)) for event_type in spec.counted_types]
    for ratio in spec.ratios:
        denominator = counts.get(ratio.denominator, 0)
        row.append(counts.get(ratio.numerator, 0) / denominator if denominator else None)
    has_events = state.anchor_ms > 0
    row.append(elapsed / HOUR_MS if has_events else None)
    row.append(max(at_ms - state.last_high_intent_ms, 0) / HOUR_MS if state.last_high_intent_ms else None)
    row.append(max(at_ms - state.first_event_ms, 0) / DAY_MS if has_events else None)
    row.append(float(_active_days_as_of(state, at_ms, spec.active_days_window)))
    row += [state.profile.get(attribute) for attribute in spec.profile_attributes]
    return row


class FeatureRow(Mapping[str, FeatureValue]):
    """A feature row read by name, without building a dict per lead (segment rules read a few features)."""

    __slots__ = ("_index", "_row")

    def __init__(self, index: Mapping[str, int], row: Sequence[FeatureValue]) -> None:
        self._index = index
        self._row = row

    def __getitem__(self, name: str) -> FeatureValue:
        return self._row[self._index[name]]

    def get(self, name: str, default: FeatureValue = None) -> FeatureValue:  # type: ignore[override]
        position = self._index.get(name)
        return default if position is None else self._row[position]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


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
        """One float64 row per lead from named values; missing values and unseen categories become NaN."""
        return self.encode_rows([[values.get(name) for name in self.names] for values in values_rows])

    def encode_rows(self, rows: Sequence[Sequence[FeatureValue]]) -> np.ndarray:
        """The same from rows already in `names` order (numpy turns None into NaN)."""
        codes: dict[str, dict[str, float]] = self._codes  # type: ignore[attr-defined]
        categorical = [(i, codes[name]) for i, name in enumerate(self.names) if name in codes]
        matrix = []
        for row in rows:
            encoded = list(row)
            for position, vocabulary in categorical:
                value = encoded[position]
                encoded[position] = math.nan if value is None else vocabulary.get(str(value), math.nan)
            matrix.append(encoded)
        return np.array(matrix, dtype=np.float64).reshape(len(rows), len(self.names))
