"""From a lead's state to named feature values (as of a time) and to model input rows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from models.spec import TIME_FEATURES, FeatureSpec
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
    """Named features of `state` as of `at_ms`; None where a value does not exist yet (a batch of one)."""
    return FeatureBatch.of((state,), at_ms, spec).values(0)


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

    at_ms: np.ndarray  # the time each lead's features are as of (int64 ms)
    numeric_names: tuple[str, ...]
    numeric: np.ndarray  # leads x numeric_names
    profile: dict[str, list[str | None]]  # profile attribute -> one value per lead
    # The moments time features count from, by LeadState attribute (0 = never), one per lead: the due planner's.
    since: dict[str, np.ndarray]

    @classmethod
    def of(cls, states: Sequence[LeadState], at_ms: int | Sequence[int], spec: FeatureSpec) -> FeatureBatch:
        """The features of `states` as of `at_ms`: one time for all (scoring a batch) or one per lead (training
        snapshots)."""
        n = len(states)
        at = np.broadcast_to(np.asarray(at_ms, dtype=np.int64), (n,))
        at_list = at.tolist()
        since = {
            attribute: _column((getattr(s, attribute) for s in states), n, np.int64)
            for attribute in dict.fromkeys(time.since for time in TIME_FEATURES)
        }
        elapsed = np.maximum(at - since["anchor_ms"], 0)
        columns: list[np.ndarray] = []
        # One float pow per lead and distinct half-life (not a numpy power): the fold's own decay, to the bit.
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
        for time in TIME_FEATURES:
            moment = since[time.since]
            columns.append(np.where(moment > 0, np.maximum(at - moment, 0) / time.unit_ms, np.nan))
        window = spec.active_days_window
        columns.append(_column(map(_active_days_as_of, states, at_list, [window] * n), n))
        for dated in spec.days_since:
            dates = [s.profile.get(dated.property) for s in states]
            columns.append(_column(map(_or_nan, map(days_since, dates, at_list)), n))
        for event_type in spec.days_since_last:
            last = _column((s.last_ms.get(event_type, -1) for s in states), n, np.int64)
            columns.append(np.where(last >= 0, (at - last) / DAY_MS, np.nan))
        for attribute in spec.numeric_profile_attributes:
            columns.append(_column((_or_nan(numeric_value(s.profile.get(attribute))) for s in states), n))
        numeric = np.column_stack(columns) if n else np.empty((0, len(columns)))
        profile = {a: [s.profile.get(a) for s in states] for a in spec.profile_attributes}
        return cls(at, _numeric_names(spec), numeric, profile, since)

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

    def values(self, index: int) -> dict[str, FeatureValue]:
        """One lead's named values, None where a value does not exist."""
        return dict(zip(self.names, self.row(index), strict=True))

    def model_input(self, layout: FeatureLayout) -> np.ndarray:
        """The model's input matrix; the layout's columns are these features in order (checked at load)."""
        if layout.names != self.names:
            raise ValueError("the model's feature columns differ from the feature config's")
        encoded = [layout.category_codes(name, values) for name, values in self.profile.items()]
        return np.column_stack([self.numeric, *encoded]) if encoded else self.numeric


def _numeric_names(spec: FeatureSpec) -> tuple[str, ...]:
    return spec.feature_names[: -len(spec.profile_attributes) or None]


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
        """One float64 row per lead from named values: a missing value is NaN, a categorical one its code."""
        columns = [
            self.category_codes(name, [values.get(name) for values in values_rows])
            if name in self.categories
            else np.array([values.get(name) for values in values_rows], dtype=np.float64)  # None becomes NaN
            for name in self.names
        ]
        return np.column_stack(columns) if columns else np.empty((len(values_rows), 0))
