"""From a lead's state to named feature values (as of a time) and to model input rows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter

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


def _block(values: Iterable[float], n: int, width: int, dtype: type = np.float64) -> np.ndarray:
    """n rows of `width` values, read row by row."""
    return np.fromiter(values, dtype=dtype, count=n * width).reshape(n, width)


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
        snapshots). Stored numbers are read in blocks (all decayed signals of every lead in one pass, all counts in
        another) and each block is computed with a few array operations, so one lead costs tens of microseconds
        and each of a thousand a few."""
        n = len(states)
        plan = _plan(spec)
        at = np.full(n, at_ms, dtype=np.int64) if isinstance(at_ms, int) else np.asarray(at_ms, dtype=np.int64)
        at_list = at.tolist()
        numeric = np.empty((n, len(plan.names)))
        since = _block((v for s in states for v in plan.read_since(s)), n, len(plan.since), np.int64)
        elapsed = np.maximum(at - since[:, 0], 0)  # since the last event: what decays
        # One float pow per lead and distinct half-life (not a numpy power): the fold's own decay, to the bit.
        elapsed_list = elapsed.tolist()
        decayed = _block((s.decayed.get(name, 0.0) for s in states for name in plan.decaying), n, len(plan.decaying))
        for half_life, positions in plan.half_lives.items():
            decayed[:, positions] *= _block((decay_factor(e, half_life) for e in elapsed_list), n, 1)
        numeric[:, plan.out_decaying] = decayed
        values = _block((s.values.get(name, math.nan) for s in states for name in plan.valued), n, len(plan.valued))
        numeric[:, plan.out_valued] = values
        counts = _block((s.counts.get(t, 0) for s in states for t in plan.counted), n, len(plan.counted))
        numeric[:, plan.out_counts] = counts[:, plan.counts]
        numerators, denominators = counts[:, plan.numerators], counts[:, plan.denominators]
        ratios = np.full(numerators.shape, math.nan)
        np.divide(numerators, denominators, out=ratios, where=denominators > 0)
        numeric[:, plan.out_ratios] = ratios
        moments = since[:, plan.time_since]
        times = np.maximum(at[:, None] - moments, 0) / plan.time_units
        times[moments <= 0] = math.nan  # never happened: no value
        numeric[:, plan.out_times] = times
        columns = iter(plan.out_rest)
        window = spec.active_days_window
        numeric[:, next(columns)] = _block(map(_active_days_as_of, states, at_list, [window] * n), n, 1)[:, 0]
        for dated in spec.days_since:
            dates = [s.profile.get(dated.property) for s in states]
            numeric[:, next(columns)] = _block(map(_or_nan, map(days_since, dates, at_list)), n, 1)[:, 0]
        for event_type in spec.days_since_last:
            last = _block((s.last_ms.get(event_type, -1) for s in states), n, 1, np.int64)[:, 0]
            numeric[:, next(columns)] = np.where(last >= 0, (at - last) / DAY_MS, math.nan)
        for attribute in spec.numeric_profile_attributes:
            attribute_values = (_or_nan(numeric_value(s.profile.get(attribute))) for s in states)
            numeric[:, next(columns)] = _block(attribute_values, n, 1)[:, 0]
        profile = {a: [s.profile.get(a) for s in states] for a in spec.profile_attributes}
        return cls(at, plan.names, numeric, profile, dict(zip(plan.since, since.T, strict=True)))

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


class _Plan:
    """What `FeatureBatch.of` reads from a spec on every call, worked out once: which stored numbers it reads in
    each block, and the output column (model order) of each feature."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.names = spec.feature_names[: -len(spec.profile_attributes) or None]
        column = {name: index for index, name in enumerate(self.names)}
        self.since = tuple(dict.fromkeys(time.since for time in TIME_FEATURES))
        self.read_since = attrgetter(*self.since)
        decaying = [s for s in spec.signals if s.decays]
        valued = [s for s in spec.signals if not s.decays]
        self.decaying = [s.name for s in decaying]
        self.valued = [s.name for s in valued]
        self.half_lives: dict[int, list[int]] = {}
        for index, signal in enumerate(decaying):
            self.half_lives.setdefault(signal.half_life, []).append(index)
        self.out_decaying = _indexes([column[s.feature_name] for s in decaying])
        self.out_valued = _indexes([column[s.feature_name] for s in valued])
        ratio_types = (t for ratio in spec.ratios for t in (ratio.numerator, ratio.denominator))
        self.counted = tuple(dict.fromkeys((*spec.counted_types, *ratio_types)))
        count_at = {t: i for i, t in enumerate(self.counted)}
        self.counts = _indexes([count_at[t] for t in spec.counted_types])
        self.numerators = _indexes([count_at[r.numerator] for r in spec.ratios])
        self.denominators = _indexes([count_at[r.denominator] for r in spec.ratios])
        first_count = len(spec.signals)
        self.out_counts = _indexes(list(range(first_count, first_count + len(spec.counted_types))))
        first_ratio = first_count + len(spec.counted_types)
        self.out_ratios = _indexes(list(range(first_ratio, first_ratio + len(spec.ratios))))
        self.out_times = _indexes([column[time.name] for time in TIME_FEATURES])
        self.time_since = _indexes([self.since.index(time.since) for time in TIME_FEATURES])
        self.time_units = np.array([time.unit_ms for time in TIME_FEATURES], dtype=np.float64)
        # active days, then days since a date, days since an event type, numeric profile attributes: in order
        self.out_rest = range(self.out_times[-1] + 1, len(self.names))


def _indexes(positions: Iterable[int]) -> np.ndarray:
    """Column positions as an index array (numpy converts a list on every use)."""
    return np.fromiter(positions, dtype=np.intp)


_PLANS: dict[int, tuple[FeatureSpec, _Plan]] = {}


def _plan(spec: FeatureSpec) -> _Plan:
    """The spec's plan, made once (a process holds a spec or two; the spec is kept so its id is not reused)."""
    cached = _PLANS.get(id(spec))
    if cached is None or cached[0] is not spec:
        cached = _PLANS[id(spec)] = (spec, _Plan(spec))
    return cached[1]


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
