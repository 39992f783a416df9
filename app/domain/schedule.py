"""When may time alone change a lead's score or segments? The due time the sweeper works from.

Two things move a quiet lead: its decayed signals (so its score) keep fading, and time-based rule
thresholds (e.g. `feature.hours_since_last_event gt 720`) are crossed at a time known in advance.
A lead with signals still above `active_epsilon` is due again within `staleness_ms`; a settled lead
is due only at its next threshold crossing, or never. The sweeper's work is the number of due leads,
not the number of stored leads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.domain.segments import SegmentSets
from models.spec import TIME_FEATURES, FeatureSpec
from models.state import DAY_MS, LeadState
from models.vector import FeatureBatch

_NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True)
class TimeThreshold:
    since: str  # the LeadState attribute counted from (a key of FeatureBatch.since)
    after_ms: int  # the condition flips this long after `since`


class DuePlanner:
    def __init__(self, spec: FeatureSpec, segments: SegmentSets, staleness_ms: int, active_epsilon: float) -> None:
        self.spec = spec
        self.staleness_ms = staleness_ms
        self.active_epsilon = active_epsilon
        # Configured time features count days from a moment the state or profile holds: crossed at a known time.
        day_features = {d.name for d in spec.days_since} | {f"days_since_last_{t}" for t in spec.days_since_last}
        time_features = {time.name: time for time in TIME_FEATURES}
        thresholds = set()
        day_thresholds = set()
        for rules in segments.sets.values():
            for rule in rules.rules:
                for leaf in rule.leaves():
                    name = (leaf.field or "").removeprefix("feature.")
                    if not isinstance(leaf.value, int | float) or isinstance(leaf.value, bool):
                        continue
                    if name in time_features:
                        time = time_features[name]
                        # +1 ms: `le 168` stops holding just after 168 h, `gt 720` starts just after 720 h
                        thresholds.add(TimeThreshold(time.since, int(leaf.value * time.unit_ms) + 1))
                    elif name in day_features:
                        day_thresholds.add((name, float(leaf.value)))
        self.thresholds = sorted(thresholds, key=lambda t: (t.since, t.after_ms))
        self.day_thresholds = sorted(day_thresholds)

    def is_active(self, state: LeadState, at_ms: int) -> bool:
        return bool(self._active(FeatureBatch.of((state,), at_ms, self.spec))[0])

    def next_due(self, state: LeadState, scored_ms: int) -> int | None:
        """The next time this lead should be rescored without a new event, or None."""
        return self.next_due_batch(FeatureBatch.of((state,), scored_ms, self.spec))[0]

    def next_due_batch(self, features: FeatureBatch) -> list[int | None]:
        """`next_due` for every lead of a batch scored at `features.at_ms`, from the features already computed."""
        scored_ms = features.at_ms
        due = np.where(self._active(features), scored_ms + self.staleness_ms, _NEVER)
        for threshold in self.thresholds:
            since = features.since[threshold.since]
            crossing = since + threshold.after_ms
            due = np.where((since > 0) & (crossing > scored_ms) & (crossing < due), crossing, due)
        for name, days in self.day_thresholds:
            # The feature grows by one a day: it reaches `days` this long after scoring (+1 ms, as above).
            now = features.column(name)
            known = ~np.isnan(now)
            ahead = np.floor((days - np.where(known, now, 0.0)) * DAY_MS).astype(np.int64) + 1
            crossing = scored_ms + ahead
            due = np.where(known & (ahead > 0) & (crossing < due), crossing, due)
        return [None if d == _NEVER else d for d in due.tolist()]

    def _active(self, features: FeatureBatch) -> np.ndarray:
        """Leads with a signal still at or above `active_epsilon`: their score keeps moving."""
        active = np.zeros(len(features), dtype=bool)
        for signal in self.spec.signals:
            if signal.decays:  # a last or max value does not move with time
                active |= features.column(signal.feature_name) >= self.active_epsilon
        return active
