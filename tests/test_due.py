"""Due times: active leads within the staleness bound, settled leads only at rule thresholds."""

from __future__ import annotations

from app.due import DuePlanner
from app.segments import SegmentSets
from models.spec import load_feature_spec, read_config_file
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
