"""The pure fold and vectorizer: order independence, decay, recency, active days, profile, duplicates."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from models.spec import FeatureSpec, load_feature_spec
from models.state import DAY_MS, LeadState, fold
from models.vector import HOUR_MS, FeatureBatch, FeatureLayout, feature_names, feature_values
from schemas.events import Event

T0 = 1_790_000_000_000  # a fixed epoch-ms origin


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return load_feature_spec()


def ev(n: int, event_type: str, at_ms: int, **properties: object) -> Event:
    return Event(event_id=f"e{n}", lead_id="L-1", type=event_type, ts=at_ms, properties=properties)


def sample_events() -> list[Event]:
    return [
        ev(1, "profile_update", T0, industry="software", company_size="51-200"),
        ev(2, "email_send", T0 + HOUR_MS),
        ev(3, "email_open", T0 + 2 * HOUR_MS),
        ev(4, "email_click", T0 + 3 * HOUR_MS),
        ev(5, "page_view", T0 + DAY_MS, category="pricing"),
        ev(6, "page_view", T0 + 3 * DAY_MS, category="docs"),
        ev(7, "demo_request", T0 + 5 * DAY_MS),
        ev(8, "chat_started", T0 + 6 * DAY_MS),
        ev(9, "profile_update", T0 + 7 * DAY_MS, company_size="201-1000"),
        ev(10, "email_send", T0 + 8 * DAY_MS),
    ]


def test_counts_every_type_including_unknown_and_profile(spec: FeatureSpec) -> None:
    state = fold(LeadState(), sample_events(), spec)
    assert state.counts == {
        "profile_update": 2,
        "email_send": 2,
        "email_open": 1,
        "email_click": 1,
        "page_view": 2,
        "demo_request": 1,
        "chat_started": 1,
    }
    assert state.event_count == 10


def test_fold_leaves_input_state_untouched(spec: FeatureSpec) -> None:
    before = fold(LeadState(), sample_events()[:3], spec)
    snapshot = before.copy()
    after = fold(before, [sample_events()[5]], spec)
    assert before == snapshot and after != before


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_out_of_order_gives_the_same_state(spec: FeatureSpec, seed: int) -> None:
    events = sample_events()
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)
    in_order = fold(LeadState(), events, spec)
    any_order = fold(LeadState(), shuffled, spec)
    assert any_order.counts == in_order.counts
    assert any_order.anchor_ms == in_order.anchor_ms
    assert any_order.first_event_ms == in_order.first_event_ms
    assert any_order.last_high_intent_ms == in_order.last_high_intent_ms
    assert any_order.active_days == in_order.active_days
    assert any_order.profile == in_order.profile
    assert any_order.decayed.keys() == in_order.decayed.keys()
    for name, value in in_order.decayed.items():
        assert any_order.decayed[name] == pytest.approx(value, rel=1e-12)


def test_batch_boundaries_do_not_matter(spec: FeatureSpec) -> None:
    events = sample_events()
    whole = fold(LeadState(), events, spec)
    split = fold(fold(LeadState(), events[:4], spec), events[4:], spec)
    assert split == whole


def test_decay_halves_over_a_half_life(spec: FeatureSpec) -> None:
    pricing = next(s for s in spec.signals if s.name == "pricing_view")
    state = fold(LeadState(), [ev(1, "page_view", T0, category="pricing")], spec)
    now = feature_values(state, T0, spec)["pricing_view_decayed"]
    later = feature_values(state, T0 + pricing.half_life_ms, spec)["pricing_view_decayed"]
    assert now == pytest.approx(1.0)
    assert later == pytest.approx(0.5)
    # a plain page view also feeds the generic page_view signal, a docs view does not feed pricing
    assert feature_values(state, T0, spec)["page_view_decayed"] == pytest.approx(1.0)
    docs = fold(LeadState(), [ev(2, "page_view", T0, category="docs")], spec)
    assert feature_values(docs, T0, spec)["pricing_view_decayed"] == 0.0


def test_a_late_event_is_added_already_decayed(spec: FeatureSpec) -> None:
    half_life = next(s for s in spec.signals if s.name == "email_click").half_life_ms
    state = fold(LeadState(), [ev(1, "email_click", T0 + half_life), ev(2, "email_click", T0)], spec)
    assert feature_values(state, T0 + half_life, spec)["email_click_decayed"] == pytest.approx(1.5)


def test_recency_and_high_intent(spec: FeatureSpec) -> None:
    state = fold(LeadState(), sample_events(), spec)
    at = T0 + 10 * DAY_MS
    values = feature_values(state, at, spec)
    assert values["hours_since_last_event"] == pytest.approx(2 * 24)
    assert values["hours_since_last_high_intent"] == pytest.approx(5 * 24)  # demo request on day 5
    assert values["days_since_first_event"] == pytest.approx(10)
    never = fold(LeadState(), [ev(1, "email_open", T0)], spec)
    assert feature_values(never, T0, spec)["hours_since_last_high_intent"] is None


def test_active_days_counts_distinct_days_in_the_window(spec: FeatureSpec) -> None:
    window = spec.active_days_window
    events = [ev(i, "email_open", T0 + d * DAY_MS + i) for i, d in enumerate([0, 0, 1, 3, 3, 3, 10])]
    state = fold(LeadState(), events, spec)
    assert feature_values(state, T0 + 10 * DAY_MS, spec)["active_days"] == 4
    # days fall out of the window as time passes, without any new event
    assert feature_values(state, T0 + window * DAY_MS, spec)["active_days"] == 3  # day 0 left the window
    assert feature_values(state, T0 + (window + 1) * DAY_MS, spec)["active_days"] == 2
    assert feature_values(state, T0 + (window + 10) * DAY_MS, spec)["active_days"] == 0


def test_ratios_and_profile(spec: FeatureSpec) -> None:
    state = fold(LeadState(), sample_events(), spec)
    values = feature_values(state, T0 + 9 * DAY_MS, spec)
    assert values["email_ctr"] == pytest.approx(0.5)
    assert values["email_open_rate"] == pytest.approx(0.5)
    assert values["industry"] == "software"
    assert values["company_size"] == "201-1000"  # the later update wins
    assert values["country"] is None
    assert feature_values(LeadState(), T0, spec)["email_ctr"] is None


def test_older_profile_update_arriving_late_does_not_win(spec: FeatureSpec) -> None:
    late = ev(20, "profile_update", T0 - DAY_MS, company_size="1-10", country="DE")
    state = fold(LeadState(), [*sample_events(), late], spec)
    assert state.profile["company_size"] == "201-1000"
    assert state.profile["country"] == "DE"  # never set by a newer update, so the older one fills it


def test_feature_names_match_values(spec: FeatureSpec) -> None:
    values = feature_values(fold(LeadState(), sample_events(), spec), T0, spec)
    assert list(values) == feature_names(spec)


def test_layout_encodes_numbers_categories_and_missing(spec: FeatureSpec) -> None:
    names = tuple(feature_names(spec))
    categories = {attribute: [] for attribute in spec.profile_attributes} | {"industry": ["finance", "software"]}
    layout = FeatureLayout(names, categories)
    state = fold(LeadState(), sample_events(), spec)
    matrix = layout.encode([feature_values(state, T0 + 9 * DAY_MS, spec), feature_values(LeadState(), T0, spec)])
    row = dict(zip(names, matrix[0], strict=True))
    assert row["industry"] == 1.0
    assert math.isnan(row["country"])
    assert row["email_send_count"] == 2.0
    assert math.isnan(dict(zip(names, matrix[1], strict=True))["email_ctr"])


def test_unknown_types_are_bounded(spec: FeatureSpec) -> None:
    events = [ev(i, f"custom_{i}", T0 + i) for i in range(200)]
    state = fold(LeadState(), events, spec)
    assert len(state.counts) <= 65
    assert sum(state.counts.values()) == 200


def test_the_batch_features_equal_the_one_lead_features_to_the_bit(spec: FeatureSpec) -> None:
    rng = random.Random(11)
    types = ["email_send", "email_open", "email_click", "page_view", "form_fill", "demo_request", "chat_started"]
    states = [LeadState()]
    for lead in range(300):
        events = [
            ev(i, rng.choice(types), T0 + rng.randrange(0, 40 * DAY_MS), category=rng.choice(["pricing", "docs", "x"]))
            for i in range(rng.randrange(1, 25))
        ]
        if lead % 3:
            events.append(ev(99, "profile_update", T0, industry=rng.choice(["software", "retail"]), country="DE"))
        states.append(fold(LeadState(), events, spec))
    at_ms = T0 + 41 * DAY_MS
    batch = FeatureBatch.of(states, at_ms, spec)
    assert batch.names == tuple(feature_names(spec))
    for index, state in enumerate(states):
        assert batch.row(index) == list(feature_values(state, at_ms, spec).values())
    categories = {attribute: [] for attribute in spec.profile_attributes} | {"industry": ["retail", "software"]}
    layout = FeatureLayout(batch.names, categories)
    one_by_one = layout.encode([feature_values(state, at_ms, spec) for state in states])
    assert np.array_equal(batch.model_input(layout), one_by_one, equal_nan=True)
