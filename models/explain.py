"""Reason codes: which features pushed one lead's score up or down, and by how much.

LightGBM's `pred_contrib` gives each feature's additive contribution to the raw score (log-odds);
the contributions plus the bias add up to the model's raw output for that lead. At ~1 ms per lead
this belongs on the read path (and on segment changes), never on every event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from models.scoring import Scorer
from models.spec import TIME_FEATURES, FeatureSpec
from models.state import DAY_MS
from models.vector import HOUR_MS, FeatureValue


@dataclass(frozen=True, slots=True)
class Reason:
    feature: str
    value: FeatureValue
    contribution: float  # in log-odds; positive raises the score
    sentence: str


@dataclass(frozen=True, slots=True)
class Explanation:
    bias: float  # the model's raw output for an average lead (log-odds)
    raw_score: float  # bias + every contribution
    reasons: list[Reason]  # the strongest contributors, positive first


def contributions(scorer: Scorer, matrix: np.ndarray) -> np.ndarray:
    """Rows of per-feature contributions with the bias in the last column (log-odds)."""
    if matrix.shape[0] == 0:
        return np.empty((0, matrix.shape[1] + 1))
    return np.asarray(scorer.booster.predict(matrix, pred_contrib=True, num_threads=1))


def explain(
    scorer: Scorer, values_rows: Sequence[Mapping[str, FeatureValue]], spec: FeatureSpec, top: int = 3
) -> list[Explanation]:
    """The `top` strongest positive and `top` strongest negative contributors for each lead."""
    matrix = scorer.layout.encode(values_rows)
    explained = []
    for values, row in zip(values_rows, contributions(scorer, matrix), strict=True):
        by_feature = list(zip(scorer.layout.names, row[:-1], strict=True))
        positive = sorted((c for c in by_feature if c[1] > 0), key=lambda c: -c[1])[:top]
        negative = sorted((c for c in by_feature if c[1] < 0), key=lambda c: c[1])[:top]
        reasons = [
            Reason(name, values.get(name), float(contribution), describe(name, values.get(name), contribution, spec))
            for name, contribution in positive + negative
        ]
        explained.append(Explanation(bias=float(row[-1]), raw_score=float(row.sum()), reasons=reasons))
    return explained


def describe(feature: str, value: FeatureValue, contribution: float, spec: FeatureSpec) -> str:
    """A sentence a marketer can read, e.g. '4.0 pricing page views, decayed over a 7-day half-life'."""
    effect = "raises" if contribution > 0 else "lowers"
    return f"{_what(feature, value, spec)} {effect} the score"


def _what(feature: str, value: FeatureValue, spec: FeatureSpec) -> str:
    if value is None:
        return f"no {feature.replace('_', ' ')} yet"
    signal = next((s for s in spec.signals if s.feature_name == feature), None)
    if signal is not None and isinstance(value, float):
        if not signal.decays:
            return f"{signal.aggregate.value} {signal.value} of {value:g}"
        days = signal.half_life / DAY_MS
        events = _plural(signal.name)
        what = f"{signal.value} summed over {events}" if signal.value else f"recent {events}"
        return f"{value:.1f} {what} (decayed, half-life {days:g} days)"
    if feature.endswith("_count") and isinstance(value, float):
        return f"{int(value)} {_plural(feature.removesuffix('_count'))} in total"
    time = next((t for t in TIME_FEATURES if t.name == feature), None)
    if time is not None and isinstance(value, float):
        return time.wording.format(_duration(value * time.unit_ms / HOUR_MS))
    if feature == "active_days" and isinstance(value, float):
        return f"active on {int(value)} of the last {spec.active_days_window} days"
    if feature.startswith("days_since_last_") and isinstance(value, float):
        return f"last {feature.removeprefix('days_since_last_').replace('_', ' ')} event {_duration(value * 24)} ago"
    if feature in {d.name for d in spec.days_since} and isinstance(value, float):
        anchor = next(d.property for d in spec.days_since if d.name == feature).replace("_", " ")
        return f"{_duration(value * 24)} since {anchor}" if value >= 0 else f"{_duration(-value * 24)} until {anchor}"
    if isinstance(value, str):
        return f"{feature.replace('_', ' ')} is {value}"
    return f"{feature.replace('_', ' ')} of {value:.2f}"


def _plural(name: str) -> str:
    words = name.replace("_", " ")
    if words.endswith("ed"):  # a past participle (assessment submitted): the events, not a plural of it
        return f"{words} events"
    return words if words.endswith("s") else f"{words}s"


def _duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} minutes"
    if hours < 48:
        return f"{hours:.0f} hours"
    return f"{hours / 24:.0f} days"
