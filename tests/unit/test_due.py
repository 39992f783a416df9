"""Due times: active leads within the staleness bound, settled leads only at rule thresholds."""

from __future__ import annotations

from datetime import UTC, datetime

from app.domain.schedule import DuePlanner
from app.domain.segments import SegmentSets
from models.spec import FeatureSpec, load_feature_spec, read_config_file
from models.state import DAY_MS, LeadState, fold
from models.vector import HOUR_MS
from schemas.events import Event

SPEC = load_feature_spec()
SETS = SegmentSets.from_config(read_config_file()["segments"])
T0 = 1_790_000_000_000


def test_active_lead_is_due_within_the_staleness_bound() -> None:
    planner = DuePlanner(SPEC, SETS, staleness_ms=60_000, active_epsilon=0.05)
    state = fold(LeadState(), [Event(event_id="e", lead_id="L", type="demo_request", ts=T0)], SPEC)
    assert planner.next_due(state, T0 + 1000) == T0 + 1000 + 60_000


def test_settled_lead_is_due_only_at_its_next_time_threshold() -> None:
    planner = DuePlanner(SPEC, SETS, staleness_ms=60_000, active_epsilon=0.05)
    state = fold(LeadState(), [Event(event_id="e", lead_id="L", type="email_open", ts=T0)], SPEC)
    at = T0 + 200 * DAY_MS  # long decayed: no longer active
    assert not planner.is_active(state, at)
    assert planner.next_due(state, at) is None  # every threshold (168 h, 720 h, 7 d, 336 h) is behind it
    soon = T0 + 100 * DAY_MS
    # 100 days after the first event all thresholds passed too; a lead quiet for 2 days is due at 168 h
    recent = fold(LeadState(), [Event(event_id="f", lead_id="L", type="email_open", ts=soon)], SPEC)
    due = DuePlanner(SPEC, SETS, staleness_ms=60_000, active_epsilon=10.0).next_due(recent, soon + 2 * DAY_MS)
    assert due == soon + 168 * HOUR_MS + 1


def test_a_lead_is_due_when_a_configured_days_since_feature_crosses_a_rule() -> None:
    # validated anew, not model_copy: a copy would keep the original's cached feature names
    spec = FeatureSpec.model_validate(
        SPEC.model_dump()
        | {"days_since_last": ["demo_request"], "days_since": [{"name": "days_since_trial", "property": "trial_start"}]}
    )
    sets = SegmentSets.from_config(
        {
            "follow_up": [
                {"name": "overdue", "when": {"field": "feature.days_since_last_demo_request", "op": "gt", "value": 14}},
                {"name": "trial_ending", "when": {"field": "feature.days_since_trial", "op": "ge", "value": 25}},
                {"name": "other", "when": {"all": []}},
            ]
        }
    )
    planner = DuePlanner(spec, sets, staleness_ms=60_000, active_epsilon=1e9)  # nothing counts as active
    events = [
        Event(event_id="p", lead_id="L", type="profile_update", ts=T0, properties={"trial_start": "2026-09-01"}),
        Event(event_id="d", lead_id="L", type="demo_request", ts=T0 + DAY_MS),
    ]
    state = fold(LeadState(), events, spec)
    trial_25 = int(datetime(2026, 9, 26, tzinfo=UTC).timestamp() * 1000)
    demo_14 = T0 + DAY_MS + 14 * DAY_MS
    scored = T0 + 2 * DAY_MS
    expected = min(demo_14, trial_25) + 1
    due = planner.next_due(state, scored)
    assert due is not None and abs(due - expected) <= 1, (due, expected)
    # once both are behind it, nothing more is due
    assert planner.next_due(state, max(demo_14, trial_25) + DAY_MS) is None
    # without the trial date, only the demo threshold is ahead
    no_date = fold(LeadState(), [events[1]], spec)
    assert abs((planner.next_due(no_date, scored) or 0) - (demo_14 + 1)) <= 1
