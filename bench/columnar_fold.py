"""A columnar fold of a micro-batch, measured against the per-event fold (models.state) by `python -m bench.fold`.

The hot-path issue asked for the fold on columns. This is it, kept equal to the per-event fold by a property test
(tests/unit/test_fold_many.py), and kept here rather than on the consumer's path because it measured slower there:
what an event does depends on its type's plan, its properties (where clauses, numbers held as strings) and, for
counts, on the order types arrive in, so the first pass stays one Python step per event, and the arrays only take
over the decay arithmetic, which the per-event fold already does with one pow per lead and half-life.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.spec import FeatureSpec
from models.state import (
    DAY_MS,
    LeadState,
    _keep_value,
    apply_plan_times,
    count_event,
    rescale_decayed,
    signal_amounts,
)
from schemas.events import EngagementEvent


def fold_many(states: Sequence[LeadState], events: Sequence[Sequence[EngagementEvent]], spec: FeatureSpec) -> None:
    """`fold_in_place` for a batch of leads at once: each state takes its own events, in the given order.

    The result is fold_in_place's (decayed sums up to float rounding: they are added in another order). Counts,
    values and the profile are applied event by event as there; what decays is done on columns of the whole
    batch: one array of every decaying amount's lead, signal, time and amount, each weighed to its lead's new
    anchor and summed per lead and signal in a few array operations, and each lead's stored sums moved to that
    anchor with one factor per lead and half-life.
    """
    n = len(states)
    decaying = spec.half_life_by_signal
    signal_index = {name: i for i, name in enumerate(decaying)}
    lead_of: list[int] = []  # one entry per event
    ts_of: list[int] = []
    amount_lead: list[int] = []  # one entry per decaying amount
    amount_signal: list[int] = []
    amount_ts: list[int] = []
    amounts: list[float] = []
    for i, (state, lead_events) in enumerate(zip(states, events, strict=True)):
        for event in lead_events:
            ts = event.ts
            lead_of.append(i)
            ts_of.append(ts)
            count_event(state, event.type)
            plan = spec.fold_plans.get(event.type)
            if plan is None:
                continue
            high_intent = False
            for signal, amount in signal_amounts(state, event, plan):
                if signal.decays:
                    amount_lead.append(i)
                    amount_signal.append(signal_index[signal.name])
                    amount_ts.append(ts)
                    amounts.append(amount)
                else:
                    _keep_value(state, signal.name, signal.aggregate, amount, ts)
                high_intent = high_intent or signal.high_intent
            apply_plan_times(state, event, plan, high_intent)
    if not lead_of:
        return
    leads = np.array(lead_of, dtype=np.int64)
    times = np.array(ts_of, dtype=np.int64)
    newest = np.zeros(n, dtype=np.int64)
    np.maximum.at(newest, leads, times)
    oldest = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(oldest, leads, times)
    anchors_before = [state.anchor_ms for state in states]
    anchors = np.maximum(np.array(anchors_before, dtype=np.int64), newest)
    window = spec.active_days_window
    # Each event's day before its lead's new anchor, as a bit of the active-days bitmap (within the window).
    offsets = anchors[leads] // DAY_MS - times // DAY_MS
    if window < 64:
        day_bits = np.zeros(n, dtype=np.uint64)
        inside = offsets < window
        np.bitwise_or.at(day_bits, leads[inside], np.left_shift(np.uint64(1), offsets[inside].astype(np.uint64)))
        new_days = day_bits.tolist()
    else:  # a bitmap past 64 bits: Python integers
        new_days = [0] * n
        for i, offset in zip(lead_of, offsets.tolist(), strict=True):
            if offset < window:
                new_days[i] |= 1 << offset
    window_mask = (1 << window) - 1
    for state, lead_events, anchor, before, first, days in zip(
        states, events, anchors.tolist(), anchors_before, oldest.tolist(), new_days, strict=True
    ):
        if not lead_events:
            continue
        if before == 0:
            state.first_event_ms = first
            state.active_days = days
        else:
            state.first_event_ms = min(state.first_event_ms, first)
            state.active_days = ((state.active_days << (anchor // DAY_MS - before // DAY_MS)) | days) & window_mask
            if anchor > before and state.decayed:
                rescale_decayed(state, anchor - before, spec)
        state.anchor_ms = anchor
    if amounts:
        # Each amount weighed to its lead's new anchor, summed per lead and signal, added to the moved sums.
        at = np.array(amount_lead, dtype=np.int64)
        signals = np.array(amount_signal, dtype=np.int64)
        half_lives = np.array(list(decaying.values()), dtype=np.float64)
        weights = np.power(2.0, -(anchors[at] - np.array(amount_ts, dtype=np.int64)) / half_lives[signals])
        cells, where = np.unique(at * len(decaying) + signals, return_inverse=True)
        sums = np.bincount(where, weights=np.array(amounts) * weights, minlength=len(cells))
        names = list(decaying)
        width = len(decaying)
        for cell, total in zip(cells.tolist(), sums.tolist(), strict=True):
            decayed = states[cell // width].decayed
            name = names[cell % width]
            decayed[name] = decayed.get(name, 0.0) + total
