"""From a lead's state to named feature values (as of a time) and to model input rows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from models.spec import FeatureSpec
from models.state import DAY_MS, LeadState, decay_factor, numeric_value

HOUR_MS = 3_600_000
FeatureValue = float | str | None
# A vocabulary that ends with this bucket takes every value it does not list (values too rare in training, and
# ones first seen after it) there, instead of treating them as missing.
OTHER_CATEGORY = "__other__"


def feature_names(spec: FeatureSpec) -> list[str]:
    """Every feature the spec defines, in model column order."""
    return list(spec.feature_names)


def feature_values(state: LeadState, at_ms: int, spec: FeatureSpec) -> dict[str, FeatureValue]:
    """Named features of `state` as of `at_ms`; None where a value does not exist yet."""
    return dict(zip(spec.feature_names, feature_row(state, at_ms, spec), strict=True))


def feature_row(state: LeadState, at_ms: int, spec: FeatureSpec) -> list[FeatureValue]:
    """The same values as `feature_values`, as a list in `feature_names` order (one lead: API, training).

    `FeatureBatch` computes the same values for a micro-batch; tests hold the two equal.
    """
    elapsed = max(at_ms - state.anchor_ms, 0)
    decayed, counts = state.decayed, state.counts
    row: list[FeatureValue] = [
        (value * decay_factor(elapsed, signal.half_life) if (value := decayed.get(signal.name, 0.0)) else 0.0)
        if signal.decays
        else state.values.get(signal.name)
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
    row += [days_since(state.profile.get(dated.property), at_ms) for dated in spec.days_since]
    row += [
        (at_ms - last) / DAY_MS if (last := state.last_ms.get(event_type)) is not None else None
        for event_type in spec.days_since_last
    ]
    row += [numeric_value(state.profile.get(attribute)) for attribute in spec.numeric_profile_attributes]
    row += [state.profile.get(attribute) for attribute in spec.profile_attributes]
    return row


def days_since(date: str | None, at_ms: int) -> float | None:
    """Days from an ISO date or RFC 3339 time (a date or a time without offset is UTC) to `at_ms`; negative
    before it; None for a missing or unreadable date."""
    if not date:
        return None
    try:
        moment = datetime.fromisoformat(date)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (at_ms - moment.timestamp() * 1000) / DAY_MS


def _column(values: Iterable[float], n: int, dtype: type = np.float64) -> np.ndarray:
    return np.fromiter(values, dtype=dtype, count=n)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """The features of many leads as of one time, column by column: the scoring hot path's form.

    Numeric features are float64 columns with NaN where a value does not exist yet; profile attributes
    stay strings (or None). One code path computes every feature, for one lead or a micro-batch.
    """

    at_ms: int
    numeric_names: tuple[str, ...]
    numeric: np.ndarray  # leads x numeric_names
    profile: dict[str, list[str | None]]  # profile attribute -> one value per lead
    # Event times the due planner measures from (0 = never), one per lead.
    anchor_ms: np.ndarray
    first_event_ms: np.ndarray
    last_high_intent_ms: np.ndarray

    @classmethod
    def of(cls, states: Sequence[LeadState], at_ms: int, spec: FeatureSpec) -> FeatureBatch:
        n = len(states)
        anchor = _column((s.anchor_ms for s in states), n, np.int64)
        first = _column((s.first_event_ms for s in states), n, np.int64)
        high_intent = _column((s.last_high_intent_ms for s in states), n, np.int64)
        elapsed = np.maximum(at_ms - anchor, 0)
        columns: list[np.ndarray] = []
        # The same float pow as the one-lead path, once per distinct half-life: the values agree to the bit.
        elapsed_list = elapsed.tolist()
        factors = {
            h: _column((decay_factor(e, h) for e in elapsed_list), n)
            for h in {s.half_life for s in spec.signals if s.decays}
        }
        for signal in spec.signals:
            if signal.decays:
                stored = _column((s.decayed.get(signal.name, 0.0) for s in states), n)
                columns.append(stored * factors[signal.half_life])
            else:
                columns.append(_column((s.values.get(signal.name, math.nan) for s in states), n))
        ratio_types = [t for ratio in spec.ratios for t in (ratio.numerator, ratio.denominator)]
        counts = {
            t: _column((s.counts.get(t, 0) for s in states), n)
            for t in dict.fromkeys(spec.counted_types + tuple(ratio_types))
        }
        columns += [counts[t] for t in spec.counted_types]
        with np.errstate(divide="ignore", invalid="ignore"):
            for ratio in spec.ratios:
                denominator = counts[ratio.denominator]
                columns.append(np.where(denominator > 0, counts[ratio.numerator] / denominator, np.nan))
        has_events = anchor > 0
        columns.append(np.where(has_events, elapsed / HOUR_MS, np.nan))
        columns.append(np.where(high_intent > 0, np.maximum(at_ms - high_intent, 0) / HOUR_MS, np.nan))
        columns.append(np.where(has_events, np.maximum(at_ms - first, 0) / DAY_MS, np.nan))
        window = spec.active_days_window
        columns.append(_column((_active_days_as_of(s, at_ms, window) for s in states), n))
        for dated in spec.days_since:
            columns.append(_column((_or_nan(days_since(s.profile.get(dated.property), at_ms)) for s in states), n))
        for event_type in spec.days_since_last:
            last = _column((s.last_ms.get(event_type, -1) for s in states), n, np.int64)
            columns.append(np.where(last >= 0, (at_ms - last) / DAY_MS, np.nan))
        for attribute in spec.numeric_profile_attributes:
            columns.append(_column((_or_nan(numeric_value(s.profile.get(attribute))) for s in states), n))
        numeric = np.column_stack(columns) if n else np.empty((0, len(columns)))
        profile = {a: [s.profile.get(a) for s in states] for a in spec.profile_attributes}
        return cls(at_ms, _numeric_names(spec), numeric, profile, anchor, first, high_intent)

    def __len__(self) -> int:
        return int(self.numeric.shape[0])

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.numeric_names, *self.profile)

    def column(self, name: str) -> np.ndarray:
        """One feature for every lead: float64 (NaN = no value) or, for a profile attribute, str or None."""
        if name in self.profile:
            return np.array(self.profile[name], dtype=object)
        return self.numeric[:, self.numeric_names.index(name)]

    def row(self, index: int) -> list[FeatureValue]:
        """One lead's values in `names` order, None where a value does not exist."""
        numeric: list[FeatureValue] = [None if math.isnan(v) else v for v in self.numeric[index].tolist()]
        return numeric + [values[index] for values in self.profile.values()]

    def model_input(self, layout: FeatureLayout) -> np.ndarray:
        """The model's input matrix; the layout's columns are these features in order (checked at load)."""
        if layout.names != self.names:
            raise ValueError("the model's feature columns differ from the feature config's")
        encoded = [layout.category_codes(name, values) for name, values in self.profile.items()]
        return np.column_stack([self.numeric, *encoded]) if encoded else self.numeric


def _numeric_names(spec: FeatureSpec) -> tuple[str, ...]:
    return spec.feature_names[: -len(spec.profile_attributes) or None]


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
        # The code of an unlisted value: its vocabulary's "other" bucket, or NaN (missing) without one.
        unlisted = {name: vocabulary.get(OTHER_CATEGORY, math.nan) for name, vocabulary in codes.items()}
        object.__setattr__(self, "_unlisted", unlisted)

    @property
    def categorical_names(self) -> list[str]:
        return [n for n in self.names if n in self.categories]

    def category_codes(self, name: str, values: Sequence[FeatureValue]) -> np.ndarray:
        """A categorical column's vocabulary indexes; a missing value is NaN, an unlisted one its "other" bucket
        (NaN for a vocabulary without one)."""
        vocabulary: dict[str, float] = self._codes.get(name, {})  # type: ignore[attr-defined]
        unlisted: float = self._unlisted.get(name, math.nan)  # type: ignore[attr-defined]
        return np.array([math.nan if v is None else vocabulary.get(str(v), unlisted) for v in values], dtype=np.float64)

    def encode(self, values_rows: Sequence[Mapping[str, FeatureValue]]) -> np.ndarray:
        """One float64 row per lead from named values; missing values and unseen categories become NaN."""
        return self.encode_rows([[values.get(name) for name in self.names] for values in values_rows])

    def encode_rows(self, rows: Sequence[Sequence[FeatureValue]]) -> np.ndarray:
        """The same from rows already in `names` order (numpy turns None into NaN)."""
        codes: dict[str, dict[str, float]] = self._codes  # type: ignore[attr-defined]
        unlisted: dict[str, float] = self._unlisted  # type: ignore[attr-defined]
        categorical = [(i, codes[name], unlisted[name]) for i, name in enumerate(self.names) if name in codes]
        matrix = []
        for row in rows:
            encoded = list(row)
            for position, vocabulary, other in categorical:
                value = encoded[position]
                encoded[position] = math.nan if value is None else vocabulary.get(str(value), other)
            matrix.append(encoded)
        return np.array(matrix, dtype=np.float64).reshape(len(rows), len(self.names))
