"""A lead's behavioural state and the pure fold that applies events to it.

The fold is order-independent in event time: decayed values are kept as of `anchor_ms` (the latest
event time seen), an older event is added already decayed to that anchor, and a newer one first moves
the anchor. So a late or out-of-order event gives the same state as if it had arrived in order (up to
float rounding). Training replays history through this same code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from models.spec import Aggregate, FeatureSpec, FoldPlan, SignalMatcher
from schemas.events import EngagementEvent

DAY_MS = 86_400_000
# A producer inventing types must not grow a lead's record without bound: past this many distinct
# types, further new ones are counted together under OTHER_TYPES.
MAX_COUNTED_TYPES = 64
OTHER_TYPES = "_other"
MAX_PROFILE_ATTRIBUTES = 32
MAX_PROFILE_VALUE_LENGTH = 200


@dataclass(slots=True)
class LeadState:
    counts: dict[str, int] = field(default_factory=dict)
    decayed: dict[str, float] = field(default_factory=dict)  # signal -> value as of anchor_ms
    anchor_ms: int = 0  # latest event time applied; 0 = no event yet
    first_event_ms: int = 0
    last_high_intent_ms: int = 0  # 0 = never
    active_days: int = 0  # bitmap: bit i set = activity on UTC day (anchor day - i)
    profile: dict[str, str] = field(default_factory=dict)
    profile_ms: dict[str, int] = field(default_factory=dict)  # when each attribute was last set
    # Configs that use them only (empty otherwise, and then free to store):
    values: dict[str, float] = field(default_factory=dict)  # signal -> its `last` or `max` value
    values_ms: dict[str, int] = field(default_factory=dict)  # signal -> event time of its `last` value
    last_ms: dict[str, int] = field(default_factory=dict)  # event type -> its latest event time (days_since_last)
    exited_ms: int = 0  # the first exit event's time; 0 = has not exited
    invalid_values: dict[str, int] = field(default_factory=dict)  # signal -> events whose value was not a number

    def copy(self) -> LeadState:
        return LeadState(
            counts=dict(self.counts),
            decayed=dict(self.decayed),
            anchor_ms=self.anchor_ms,
            first_event_ms=self.first_event_ms,
            last_high_intent_ms=self.last_high_intent_ms,
            active_days=self.active_days,
            profile=dict(self.profile),
            profile_ms=dict(self.profile_ms),
            values=dict(self.values),
            values_ms=dict(self.values_ms),
            last_ms=dict(self.last_ms),
            exited_ms=self.exited_ms,
            invalid_values=dict(self.invalid_values),
        )

    @property
    def uses_extensions(self) -> bool:
        """Whether any of the fields only some configs use holds something (the record codec stores them apart)."""
        return bool(self.values or self.last_ms or self.exited_ms or self.invalid_values)

    @property
    def event_count(self) -> int:
        return sum(self.counts.values())


def decay_factor(elapsed_ms: float, half_life_ms: int) -> float:
    return float(2.0 ** (-elapsed_ms / half_life_ms))


def fold(state: LeadState, events: Iterable[EngagementEvent], spec: FeatureSpec) -> LeadState:
    """The state after applying `events` in the given order; `state` is left untouched."""
    folded = state.copy()
    fold_in_place(folded, events, spec)
    return folded


def fold_in_place(state: LeadState, events: Iterable[EngagementEvent], spec: FeatureSpec) -> None:
    """`fold` for a state nobody else holds: it is changed instead of copied."""
    for event in events:
        _apply_in_place(state, event, spec)


def _apply_in_place(state: LeadState, event: EngagementEvent, spec: FeatureSpec) -> None:
    ts = event.ts
    count_event(state, event.type)

    if state.anchor_ms == 0:
        state.anchor_ms = state.first_event_ms = ts
        state.active_days = 1
    elif ts > state.anchor_ms:
        _move_anchor(state, ts, spec)
    else:
        state.first_event_ms = min(state.first_event_ms, ts)
        day_offset = state.anchor_ms // DAY_MS - ts // DAY_MS
        if day_offset < spec.active_days_window:
            state.active_days |= 1 << day_offset

    plan = spec.fold_plans.get(event.type)
    if plan is None:
        return
    high_intent = False
    decayed = state.decayed
    for signal, amount in signal_amounts(state, event, plan):
        if signal.decays:
            weight = decay_factor(state.anchor_ms - ts, signal.half_life_ms) if ts < state.anchor_ms else 1.0
            decayed[signal.name] = decayed.get(signal.name, 0.0) + amount * weight
        else:
            _keep_value(state, signal.name, signal.aggregate, amount, ts)
        high_intent = high_intent or signal.high_intent
    apply_plan_times(state, event, plan, high_intent)


def count_event(state: LeadState, event_type: str) -> None:
    counts = state.counts
    key = event_type if event_type in counts or len(counts) < MAX_COUNTED_TYPES else OTHER_TYPES
    counts[key] = counts.get(key, 0) + 1


def signal_amounts(state: LeadState, event: EngagementEvent, plan: FoldPlan) -> list[tuple[SignalMatcher, float]]:
    """The amount the event adds to each of its plan's signals whose `where` it matches; a value that is not a
    number adds nothing and is counted in the state's invalid_values."""
    amounts = []
    for signal in plan.signals:
        if signal.where and not signal.matches(event.properties):
            continue
        if signal.value is None:
            amounts.append((signal, 1.0))
            continue
        number = numeric_value(event.properties.get(signal.value))
        if number is None:
            state.invalid_values[signal.name] = state.invalid_values.get(signal.name, 0) + 1
        else:
            amounts.append((signal, number))
    return amounts


def apply_plan_times(state: LeadState, event: EngagementEvent, plan: FoldPlan, high_intent: bool) -> None:
    """What the event's plan does besides its signals: the high-intent time, the profile, the type's latest time
    and the exit, each settled by event time (so in any order)."""
    ts = event.ts
    if high_intent and ts > state.last_high_intent_ms:
        state.last_high_intent_ms = ts
    if plan.profile:
        _apply_profile(state, event)
    if plan.keep_last and ts > state.last_ms.get(event.type, -1):
        state.last_ms[event.type] = ts
    if plan.exits and (state.exited_ms == 0 or ts < state.exited_ms):
        state.exited_ms = ts


def numeric_value(value: Any) -> float | None:
    """A property as a number: an int or float, or a string holding one; None if it is missing, not a number
    (a boolean is not one) or not finite."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _keep_value(state: LeadState, name: str, aggregate: Aggregate, amount: float, ts: int) -> None:
    values = state.values
    if aggregate is Aggregate.MAX:
        if name not in values or amount > values[name]:
            values[name] = amount
        return
    # last: the latest event time wins; at equal times the larger value, so any order gives the same state
    kept_ms = state.values_ms.get(name)
    if kept_ms is None or ts > kept_ms or (ts == kept_ms and amount > values[name]):
        values[name] = amount
        state.values_ms[name] = ts


def _move_anchor(state: LeadState, ts: int, spec: FeatureSpec) -> None:
    rescale_decayed(state, ts - state.anchor_ms, spec)
    day_shift = ts // DAY_MS - state.anchor_ms // DAY_MS
    window_mask = (1 << spec.active_days_window) - 1
    state.active_days = ((state.active_days << day_shift) | 1) & window_mask
    state.anchor_ms = ts


def rescale_decayed(state: LeadState, elapsed_ms: int, spec: FeatureSpec) -> None:
    """The decayed sums as of `elapsed_ms` after the anchor (the caller moves the anchor)."""
    half_lives = spec.half_life_by_signal
    factors: dict[int, float] = {}  # one pow per distinct half-life
    for name, value in state.decayed.items():
        half_life = half_lives.get(name)
        if half_life is not None:
            factor = factors.get(half_life)
            if factor is None:
                factor = factors[half_life] = decay_factor(elapsed_ms, half_life)
            state.decayed[name] = value * factor


def _apply_profile(state: LeadState, event: EngagementEvent) -> None:
    for name, value in event.properties.items():
        if value is None or isinstance(value, dict | list):
            continue
        known = name in state.profile
        if not known and len(state.profile) >= MAX_PROFILE_ATTRIBUTES:
            continue
        # Latest event time wins per attribute, so out-of-order updates settle the same way.
        if event.ts >= state.profile_ms.get(name, -1):
            state.profile[name] = str(value)[:MAX_PROFILE_VALUE_LENGTH]
            state.profile_ms[name] = event.ts
