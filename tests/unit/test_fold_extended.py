"""Features for event logs that are not marketing funnels: numeric property signals (decayed sum, last, max),
days since a profile date or since an event type, numeric profile attributes, rare categories, exit events.

One fold and one vectorizer serve the consumer and training; these hold the new parts order-independent, equal
between the one-lead and the batch paths, and stored and read back whole."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import numpy as np
import pytest

from app.domain.batch import SourcedEvent, fold_batch
from app.domain.lead import LeadRecord
from app.storage.codec import RecordCodec
from models.spec import FeatureSpec
from models.state import DAY_MS, LeadState, fold, numeric_value
from models.vector import OTHER_CATEGORY, FeatureBatch, FeatureLayout, days_since, feature_values
from schemas.events import Event

T0 = 1_790_000_000_000
HOUR = 3_600_000


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    """A course platform: sessions with clicks, assessments with scores, a programme start, withdrawals."""
    return FeatureSpec.model_validate(
        {
            "signals": [
                {"name": "sessions", "types": ["session"], "half_life": "7d"},
                {"name": "clicks", "types": ["session"], "half_life": "7d", "value": "clicks"},
                {"name": "latest_score", "types": ["assessment"], "half_life": "30d", "value": "score",
                 "aggregate": "last"},
                {"name": "best_score", "types": ["assessment"], "half_life": "30d", "value": "score",
                 "aggregate": "max"},
            ],
            "counted_types": ["assessment"],
            "high_intent": ["best_score"],
            "profile_attributes": ["region"],
            "numeric_profile_attributes": ["age"],
            "days_since": [{"name": "days_since_start", "property": "programme_start"}],
            "days_since_last": ["assessment"],
            "exit_types": ["withdrawn"],
            "conversion_type": "passed",
        }
    )  # fmt: skip


def ev(n: int, event_type: str, at_ms: int, **properties: object) -> Event:
    return Event(event_id=f"e{n}", lead_id="S-1", type=event_type, ts=at_ms, properties=properties)


def course_events() -> list[Event]:
    return [
        ev(1, "profile_update", T0, region="north", age="34", programme_start="2026-09-01"),
        ev(2, "session", T0 + HOUR, clicks=12),
        ev(3, "session", T0 + 2 * HOUR, clicks="7"),  # a number in a string counts
        ev(4, "session", T0 + 3 * HOUR, clicks="many"),  # not a number: skipped, counted as invalid
        ev(5, "session", T0 + 4 * HOUR),  # missing: skipped, counted
        ev(6, "session", T0 + 5 * HOUR, clicks=True),  # a boolean is not a number
        ev(7, "assessment", T0 + DAY_MS, score=61.5),
        ev(8, "assessment", T0 + 3 * DAY_MS, score=48),
        ev(9, "assessment", T0 + 2 * DAY_MS, score=90),  # late: neither the last by time nor lost for max
        ev(10, "session", T0 + 4 * DAY_MS, clicks=3),
    ]


def test_numeric_signals_sum_keep_the_last_and_the_max_and_count_bad_values(spec: FeatureSpec) -> None:
    state = fold(LeadState(), course_events(), spec)
    anchor = T0 + 4 * DAY_MS
    assert state.anchor_ms == anchor
    half_life = 7 * DAY_MS
    expected_clicks = sum(value * 2 ** (-(anchor - at) / half_life) for value, at in
                          ((12, T0 + HOUR), (7, T0 + 2 * HOUR), (3, T0 + 4 * DAY_MS)))  # fmt: skip
    assert state.decayed["clicks"] == pytest.approx(expected_clicks, rel=1e-12)
    assert state.decayed["sessions"] == pytest.approx(
        sum(2 ** (-(anchor - at) / half_life) for at in (T0 + h * HOUR for h in range(1, 6))) + 1.0, rel=1e-12
    )
    assert state.values["latest_score"] == 48.0 and state.values_ms["latest_score"] == T0 + 3 * DAY_MS
    assert state.values["best_score"] == 90.0
    assert state.invalid_values == {"clicks": 3}
    assert state.last_ms == {"assessment": T0 + 3 * DAY_MS}
    assert state.exited_ms == 0
    assert state.last_high_intent_ms == T0 + 3 * DAY_MS


def test_a_batch_reports_the_bad_values_it_met_by_signal(spec: FeatureSpec) -> None:
    """What the consumer counts in leadscore_invalid_values_total: the batch's own bad values, not the lead's
    total so far (a lead that already had some adds only the new ones)."""
    events = course_events()
    sourced = [SourcedEvent(event, 0, offset) for offset, event in enumerate(events)]
    first = fold_batch({}, sourced[:4], spec, dedupe_window=16)
    assert first.invalid_values == {"clicks": 1}  # event 4 ("many")
    second = fold_batch(first.records, sourced[4:], spec, dedupe_window=16)
    assert second.invalid_values == {"clicks": 2}  # events 5 (missing) and 6 (a boolean)
    assert second.records["S-1"].state.invalid_values == {"clicks": 3}
    again = fold_batch(second.records, sourced, spec, dedupe_window=16)  # a replay applies nothing
    assert again.invalid_values == {} and again.replayed == len(events)


def test_any_event_order_gives_the_same_state(spec: FeatureSpec) -> None:
    events = [*course_events(), ev(11, "assessment", T0 + 3 * DAY_MS, score=70)]  # a tie in time with event 8
    reference = fold(LeadState(), sorted(events, key=lambda e: e.ts), spec)
    rng = random.Random(3)
    for _ in range(30):
        shuffled = events[:]
        rng.shuffle(shuffled)
        state = fold(LeadState(), shuffled, spec)
        assert state.values == reference.values and state.values_ms == reference.values_ms
        assert state.last_ms == reference.last_ms and state.invalid_values == reference.invalid_values
        assert state.decayed == pytest.approx(reference.decayed, rel=1e-12)
    assert reference.values["latest_score"] == 70.0, "at equal times the larger value is kept, in any order"


def test_exit_records_the_first_exit_whatever_the_order(spec: FeatureSpec) -> None:
    events = [*course_events(), ev(20, "withdrawn", T0 + 9 * DAY_MS), ev(21, "withdrawn", T0 + 6 * DAY_MS)]
    assert fold(LeadState(), events, spec).exited_ms == T0 + 6 * DAY_MS
    assert fold(LeadState(), events[::-1], spec).exited_ms == T0 + 6 * DAY_MS


def test_the_new_features_one_lead_and_in_a_batch(spec: FeatureSpec) -> None:
    at = T0 + 10 * DAY_MS
    state = fold(LeadState(), course_events(), spec)
    values = feature_values(state, at, spec)
    start = datetime(2026, 9, 1, tzinfo=UTC).timestamp() * 1000
    assert values["days_since_start"] == pytest.approx((at - start) / DAY_MS)
    assert values["days_since_last_assessment"] == pytest.approx(7.0)
    assert values["age"] == 34.0
    assert values["region"] == "north"
    assert values["latest_score_last"] == 48.0 and values["best_score_max"] == 90.0
    assert values["clicks_decayed"] == pytest.approx(state.decayed["clicks"] * 2 ** (-6 / 7), rel=1e-12)

    empty = LeadState()
    odd = fold(LeadState(), [ev(1, "profile_update", T0, age="unknown", programme_start="next term")], spec)
    none_values = feature_values(odd, at, spec)
    assert none_values["age"] is None and none_values["days_since_start"] is None
    assert none_values["latest_score_last"] is None and none_values["days_since_last_assessment"] is None

    batch = FeatureBatch.of([state, empty, odd], at, spec)
    for index, lead in enumerate((state, empty, odd)):
        one = list(feature_values(lead, at, spec).values())
        assert batch.row(index) == one, index


def test_days_since_reads_dates_and_times_and_gives_none_for_the_rest() -> None:
    at = int(datetime(2026, 9, 11, tzinfo=UTC).timestamp() * 1000)
    assert days_since("2026-09-01", at) == 10.0
    assert days_since("2026-09-21T00:00:00Z", at) == -10.0  # a deadline ahead: days until, negative
    assert days_since("2026-09-10T12:00:00+12:00", at) == 1.0
    assert days_since("soon", at) is None and days_since(None, at) is None and days_since("", at) is None


def test_numeric_value_accepts_numbers_only() -> None:
    assert numeric_value(3) == 3.0 and numeric_value("2.5") == 2.5 and numeric_value(-1e3) == -1000.0
    for bad in (None, True, "x", "nan", float("inf"), [1], {"a": 1}):
        assert numeric_value(bad) is None, bad


def test_a_rare_or_new_category_takes_the_other_bucket_when_the_vocabulary_has_one() -> None:
    with_other = FeatureLayout(("region",), {"region": ["north", "south", OTHER_CATEGORY]})
    without = FeatureLayout(("region",), {"region": ["north", "south"]})
    codes = with_other.category_codes("region", ["south", "east", None])
    assert codes[0] == 1.0 and codes[1] == 2.0 and math.isnan(codes[2])
    assert math.isnan(without.category_codes("region", ["east"])[0]), "an old model keeps treating it as missing"
    assert np.array_equal(with_other.encode([{"region": "east"}]), np.array([[2.0]]))


def test_the_record_stores_and_reads_back_every_new_field(spec: FeatureSpec) -> None:
    codec = RecordCodec.for_spec(spec)
    state = fold(LeadState(), [*course_events(), ev(30, "withdrawn", T0 + 5 * DAY_MS)], spec)
    record = LeadRecord("S-1", state, partition=2, offset=41, score=0.0, segments={}, model_version="m1")
    decoded = codec.decode("S-1", codec.encode(record))
    for name in ("values", "values_ms", "last_ms", "exited_ms", "invalid_values", "decayed", "counts", "profile"):
        assert getattr(decoded.state, name) == getattr(state, name), name
    plain = fold(LeadState(), course_events()[:2], FeatureSpec.model_validate({**_marketing(), "signals": [
        {"name": "sessions", "types": ["session"], "half_life": "7d"}]}))  # fmt: skip
    assert not plain.uses_extensions, "a config without the new features stores nothing more"


def _marketing() -> dict[str, object]:
    return {"counted_types": [], "high_intent": [], "profile_attributes": []}


def test_an_exited_lead_scores_zero_says_so_and_gives_no_reasons() -> None:
    from app.api.documents import lead_document
    from app.domain.batch import score_leads
    from app.settings import DEFAULT_MODEL_PATH, ServiceConfig
    from models.scoring import load_scorer

    shipped = ServiceConfig.load(None)
    # The shipped model fits: exit types add no feature.
    features = FeatureSpec.model_validate(shipped.features.model_dump() | {"exit_types": ["left_company"]})
    config = ServiceConfig(features, shipped.segments)
    scorer = load_scorer(DEFAULT_MODEL_PATH, features)
    busy = [
        Event(event_id=f"b{i}", lead_id="L-1", type=kind, ts=T0 + i * HOUR)
        for i, kind in enumerate(["demo_request", "page_view", "form_fill", "email_click"] * 3)
    ]
    open_lead = LeadRecord("L-open", fold(LeadState(), busy, features))
    gone_events = [*busy, Event(event_id="x", lead_id="L-1", type="left_company", ts=T0 + 20 * HOUR)]
    gone = LeadRecord("L-gone", fold(LeadState(), gone_events, features))
    score_leads([open_lead, gone], T0 + DAY_MS, scorer, features, config.segments)
    assert open_lead.score is not None and open_lead.score > 0.05
    assert gone.score == 0.0
    assert gone.segments["tier"] == "cold"
    document = lead_document(gone, config, scorer, reasons=3)
    assert document["status"] == "exited" and document["exited_at"] == datetime.fromtimestamp(
        (T0 + 20 * HOUR) / 1000, tz=UTC
    )
    assert document["reasons"] is None
    assert lead_document(open_lead, config, scorer, reasons=3)["status"] == "open"
    assert lead_document(open_lead, config, scorer, reasons=3)["reasons"]
