"""The columnar fold of a micro-batch (bench/columnar_fold.py, measured against the per-event fold by bench/fold.py)
against the per-event fold: on random leads and event streams (out of order, repeated events, unknown types, bad
numbers, several leads at once) every lead's state is the per-event fold's, decayed sums equal up to float rounding."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.columnar_fold import fold_many
from models.spec import FeatureSpec, load_feature_spec
from models.state import DAY_MS, MAX_COUNTED_TYPES, LeadState, fold
from schemas.events import Event

T0 = 1_790_000_000_000
SHIPPED = load_feature_spec()
# Every kind of signal and fold plan: decayed counts and sums of a property, last and max values, a where clause,
# high intent, a profile type, days since an event type, an exit type.
EXTENDED = FeatureSpec.model_validate(
    {
        "signals": [
            {"name": "sessions", "types": ["session"], "half_life": "7d"},
            {"name": "clicks", "types": ["session"], "half_life": "2d", "value": "clicks"},
            {"name": "pricing_views", "types": ["page_view"], "half_life": "3d", "where": {"category": "pricing"}},
            {"name": "latest_score", "types": ["assessment"], "half_life": "30d", "value": "score",
             "aggregate": "last"},
            {"name": "best_score", "types": ["assessment"], "half_life": "30d", "value": "score", "aggregate": "max"},
        ],
        "counted_types": ["assessment", "page_view"],
        "high_intent": ["best_score", "pricing_views"],
        "profile_attributes": ["region"],
        "days_since_last": ["assessment"],
        "exit_types": ["withdrawn"],
        "active_days_window": 90,
        "conversion_type": "passed",
    }
)  # fmt: skip

TYPES = [
    "session", "page_view", "assessment", "withdrawn", "profile_update", "email_open", "email_click", "demo_request",
    "form_submit", "unknown_kind",
]  # fmt: skip
properties = st.fixed_dictionaries(
    {},
    optional={
        "clicks": st.sampled_from([0, 1, 7, -3, 2.5, "4", "x", None, True, 1e300]),
        "score": st.sampled_from([0, 55, 91.5, "70", "n/a", None]),
        "category": st.sampled_from(["pricing", "docs", "PRICING"]),
        "region": st.sampled_from(["north", "south", ""]),
        "industry": st.sampled_from(["software", "retail"]),
    },
)
# Times over four months, at a few spots per day so that equal times and same-day events occur, with days at the
# edges of the shipped 30-day active-days window weighted up.
days = st.integers(-60, 60) | st.sampled_from([-31, -30, -29, 0, 29, 30, 31])
times = st.builds(lambda day, minute: T0 + day * DAY_MS + minute * 60_000, days, st.integers(0, 3))
events = st.builds(
    lambda n, kind, ts, props: Event(event_id=f"e{n}", lead_id="L", type=kind, ts=ts, properties=props),
    st.integers(0, 50),
    st.sampled_from(TYPES) | st.builds(lambda n: f"made_up_{n}", st.integers(0, 3)),
    times,
    properties,
)
# Per lead: the events already in its stored state (none: a new lead) and the batch's events for it, which may
# repeat one of them (a redelivery the consumer's duplicate window missed is still folded the same way).
lead = st.tuples(st.lists(events, max_size=6), st.lists(events, min_size=0, max_size=6), st.booleans())


def _assert_same(columnar: LeadState, reference: LeadState) -> None:
    assert columnar.decayed.keys() == reference.decayed.keys()
    for name, value in reference.decayed.items():
        assert math.isclose(columnar.decayed[name], value, rel_tol=1e-12, abs_tol=1e-300), name
    columnar.decayed = reference.decayed
    assert columnar == reference


@pytest.mark.parametrize("spec", [SHIPPED, EXTENDED], ids=["shipped", "extended"])
@settings(max_examples=400, deadline=None)
@given(leads=st.lists(lead, min_size=1, max_size=8))
def test_the_columnar_fold_gives_each_lead_the_per_event_folds_state(
    spec: FeatureSpec, leads: list[tuple[list[Event], list[Event], bool]]
) -> None:
    stored = [fold(LeadState(), history, spec) for history, _, _ in leads]
    batches = [batch + batch[:1] if repeat else batch for _, batch, repeat in leads]
    expected = [fold(state, batch, spec) for state, batch in zip(stored, batches, strict=True)]
    columnar = [state.copy() for state in stored]
    fold_many(columnar, batches, spec)
    for got, want in zip(columnar, expected, strict=True):
        _assert_same(got, want)


def test_past_the_counted_types_the_columnar_fold_keeps_the_arrival_order() -> None:
    """Which types get a count of their own once a lead has MAX_COUNTED_TYPES depends on the order they came in."""
    kinds = [f"kind_{n}" for n in range(MAX_COUNTED_TYPES + 5)]
    batch = [Event(event_id=k, lead_id="L", type=k, ts=T0 + i, properties={}) for i, k in enumerate(kinds)]
    state = LeadState()
    fold_many([state], [batch], SHIPPED)
    assert state == fold(LeadState(), batch, SHIPPED)
    assert state.counts["_other"] == 5 and "kind_63" in state.counts and "kind_64" not in state.counts


def test_a_decayed_sum_is_moved_to_the_new_anchor_and_added_to() -> None:
    """One lead, worked by hand: an email open stored at T0, another a half-life later, one a half-life before."""
    half_life = SHIPPED.half_life_by_signal["email_open"]
    state = fold(LeadState(), [Event(event_id="a", lead_id="L", type="email_open", ts=T0)], SHIPPED)
    later = Event(event_id="b", lead_id="L", type="email_open", ts=T0 + half_life)
    earlier = Event(event_id="c", lead_id="L", type="email_open", ts=T0 - half_life)
    fold_many([state], [[later, earlier]], SHIPPED)
    assert state.anchor_ms == T0 + half_life
    assert state.first_event_ms == T0 - half_life
    assert math.isclose(state.decayed["email_open"], 1.0 + 0.5 + 0.25, rel_tol=1e-12)


@pytest.mark.parametrize("days_before", [0, 1, 29, 30, 31])
def test_active_days_at_the_windows_edge(days_before: int) -> None:
    stored = fold(LeadState(), [Event(event_id="a", lead_id="L", type="email_open", ts=T0)], SHIPPED)
    late = Event(event_id="b", lead_id="L", type="email_open", ts=T0 + 40 * DAY_MS)
    old = Event(event_id="c", lead_id="L", type="email_open", ts=T0 + (40 - days_before) * DAY_MS)
    state = stored.copy()
    fold_many([state], [[late, old]], SHIPPED)
    assert state.active_days == fold(stored, [late, old], SHIPPED).active_days
    assert state.active_days == (1 | (1 << days_before if days_before < SHIPPED.active_days_window else 0))
