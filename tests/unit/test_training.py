"""Training: point-in-time snapshots, labels, calibration, determinism and the written artifact."""

from __future__ import annotations

import gzip
import random
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import orjson
import pytest
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from devtools.simulator import SimulationSpec, write_history
from models.evaluation import expected_calibration_error, points_score, score_metrics, top_fraction_mask
from models.scoring import METADATA_FILE, MODEL_FILE, ModelRefused, Scorer, load_scorer
from models.spec import FeatureSpec, Signal, load_feature_spec
from models.state import DAY_MS, LeadState, fold
from models.training import (
    CALIBRATION_AUC_TOLERANCE,
    SnapshotTable,
    TrainingOptions,
    apply_calibration,
    build_snapshots,
    calibration_from_isotonic,
    calibration_from_sigmoid,
    category_vocabularies,
    choose_calibration,
    fit_isotonic,
    fit_sigmoid,
    lead_snapshots,
    raw_logit_bounds,
    read_history,
    snapshots_at,
    split_by_lead,
    split_by_time,
    split_rows,
    train_model,
)
from models.training_spec import CalibrationPolicy, SplitMethod
from models.vector import OTHER_CATEGORY, FeatureLayout, feature_values
from schemas.events import Event
from schemas.model import CalibrationMethod, ModelMetadata, WarningKind
from tests.support import REPO_ROOT

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
START_MS = 1_785_542_400_000  # 2026-08-01T00:00:00Z
HOUR_MS = 3_600_000
HORIZON_MS = 30 * DAY_MS
DEFAULT_ARTIFACT = REPO_ROOT / "models" / "artifacts" / "default"

# Small and fast; never seed 7, which trained the shipped model.
SMALL_OPTIONS = TrainingOptions(num_boost_round=60, early_stopping_rounds=10, version="test-model", seed=3)

_RANDOM_TYPES = [
    ("page_view", {"category": "pricing"}),
    ("page_view", {"category": "docs"}),
    ("page_view", {"category": "blog", "url": "https://example.com/blog"}),
    ("email_send", {"campaign": "c1"}),
    ("email_open", {"campaign": "c1"}),
    ("email_click", {"campaign": "c1"}),
    ("form_fill", {"form": "contact"}),
    ("form_fill", {"form": "newsletter"}),
    ("demo_request", {}),
    ("webinar_attend", {"webinar": "w1"}),
    ("chat_started", {}),
    ("profile_update", {"job_title": "CTO"}),
]


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return load_feature_spec()


def event(lead_id: str, event_type: str, ts: int, n: int, **properties: object) -> Event:
    return Event(event_id=f"{lead_id}-{n}", lead_id=lead_id, type=event_type, ts=ts, properties=properties)


def random_lead(rng: random.Random, lead_id: str, days: int = 80, converts: bool = False) -> list[Event]:
    """A lead with a profile, random engagement, and possibly a conversion, in event-time order."""
    events = [event(lead_id, "profile_update", START_MS, 0, industry="software", country="DE")]
    for n in range(1, 60):
        event_type, properties = rng.choice(_RANDOM_TYPES)
        ts = START_MS + rng.randrange(days * DAY_MS)
        events.append(event(lead_id, event_type, ts, n, **properties))
    if converts:
        events.append(event(lead_id, "converted", START_MS + rng.randrange(20 * DAY_MS, days * DAY_MS), 99))
    return sorted(events, key=lambda e: e.ts)


def write_events(path: Path, events: Sequence[Event], extra_lines: Sequence[bytes] = ()) -> None:
    lines = [e.model_dump_json().encode() + b"\n" for e in events] + list(extra_lines)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as out:
        out.writelines(lines)


# --- point in time -------------------------------------------------------------------------------------------


def test_snapshot_features_equal_a_fold_over_events_at_or_before_t(spec: FeatureSpec) -> None:
    rng = random.Random(1)
    options = TrainingOptions(snapshot_every_days=3, max_snapshots_per_lead=50)
    end = START_MS + 120 * DAY_MS
    checked = 0
    for i in range(20):
        events = random_lead(rng, f"L-{i}", converts=i % 2 == 0)
        for snap in lead_snapshots(f"L-{i}", events, end, spec, options):
            seen = [e for e in events if e.ts <= snap.at_ms]
            assert snap.values == feature_values(fold(LeadState(), seen, spec), snap.at_ms, spec)
            checked += 1
    assert checked > 100


def test_events_after_t_change_no_snapshot_at_t(spec: FeatureSpec) -> None:
    rng = random.Random(2)
    options = TrainingOptions(snapshot_every_days=2, max_snapshots_per_lead=50)
    end = START_MS + 120 * DAY_MS
    events = random_lead(rng, "L-1", days=40)
    before = lead_snapshots("L-1", events, end, spec, options)
    last_t = before[-1].at_ms
    cut = [s for s in before if s.at_ms < START_MS + 30 * DAY_MS]
    later = [
        event("L-1", t, START_MS + 30 * DAY_MS + k * HOUR_MS, 500 + k, **p)
        for k, (t, p) in enumerate(_RANDOM_TYPES * 3)
    ]
    after = lead_snapshots("L-1", sorted(events + later, key=lambda e: e.ts), end, spec, options)
    assert after[: len(cut)] == cut  # every snapshot before the new events is untouched
    assert after[-1].at_ms == last_t  # the times themselves do not depend on the events' content


def test_labels_come_only_from_conversions_after_t_within_the_horizon(spec: FeatureSpec) -> None:
    conversion = START_MS + 40 * DAY_MS
    events = [
        event("L-1", "page_view", START_MS, 1, category="pricing"),
        event("L-1", "demo_request", START_MS + 5 * DAY_MS, 2),
        event("L-1", "converted", conversion, 3),
    ]
    end = START_MS + 200 * DAY_MS
    times = [
        conversion - HORIZON_MS - 1,  # conversion 1 ms past the horizon: label 0
        conversion - HORIZON_MS,  # conversion exactly at t + horizon: label 1
        conversion - 1,  # converts 1 ms later: label 1
        conversion,  # converted at t: excluded
        conversion + DAY_MS,  # already a customer: excluded
    ]
    snaps = snapshots_at("L-1", events, times, end, spec, HORIZON_MS)
    assert [(s.at_ms, s.label) for s in snaps] == [(times[0], 0), (times[1], 1), (times[2], 1)]
    assert all(s.values["demo_request_count"] == 1.0 for s in snaps)


def test_snapshots_before_the_first_event_or_with_an_unknown_label_are_excluded(spec: FeatureSpec) -> None:
    events = [event("L-1", "page_view", START_MS + 10 * DAY_MS, 1, category="docs")]
    end = START_MS + 60 * DAY_MS
    times = [START_MS, START_MS + 10 * DAY_MS, end - HORIZON_MS, end - HORIZON_MS + 1, end]
    snaps = snapshots_at("L-1", events, times, end, spec, HORIZON_MS)
    assert [s.at_ms for s in snaps] == [START_MS + 10 * DAY_MS, end - HORIZON_MS]
    assert all(s.label == 0 for s in snaps)


def test_snapshot_times_are_sampled_within_the_lead_life_and_capped(spec: FeatureSpec) -> None:
    rng = random.Random(5)
    options = TrainingOptions(snapshot_every_days=1, max_snapshots_per_lead=4, horizon_days=10)
    end = START_MS + 90 * DAY_MS
    for i in range(30):
        events = random_lead(rng, f"L-{i}", converts=True)
        conversion = next(e.ts for e in events if e.type == "converted")
        snaps = lead_snapshots(f"L-{i}", events, end, spec, options)
        assert len(snaps) <= 4
        assert all(events[0].ts <= s.at_ms < conversion for s in snaps)
        assert all(s.at_ms + options.horizon_ms <= end for s in snaps)
        assert [s.at_ms for s in snaps] == sorted(s.at_ms for s in snaps)


def test_history_reading_skips_invalid_lines_drops_redeliveries_and_orders_by_event_time(
    tmp_path: Path, spec: FeatureSpec
) -> None:
    events = [
        event("L-1", "page_view", START_MS + 2 * DAY_MS, 1, category="pricing", url="https://x/pricing"),
        event("L-1", "email_open", START_MS + DAY_MS, 2, campaign="c"),
        event("L-2", "profile_update", START_MS, 1, industry="retail", tags=["a", "b"]),
    ]
    redelivered = events[0]
    path = tmp_path / "history.jsonl.gz"
    invalid = [b"not json\n", b'{"lead_id": "L-1"}\n', b"\n"]
    write_events(path, [*events, redelivered], invalid)
    history = read_history(path, spec)
    assert history.invalid_lines == 2
    assert history.events == 4
    replayed, dropped = history.lead_events("L-1")
    assert dropped == 1
    assert [e.type for e in replayed] == ["email_open", "page_view"]
    # Properties the fold does not read are not kept; a signal's filter key and profile attributes are.
    assert replayed[1].properties == {"category": "pricing"}
    assert history.lead_events("L-2")[0][0].properties == {"industry": "retail", "tags": ["a", "b"]}
    state = fold(LeadState(), replayed, spec)
    assert state == fold(LeadState(), sorted(events[:2], key=lambda e: e.ts), spec)


def test_converted_leads_are_excluded_after_conversion(tmp_path: Path, spec: FeatureSpec) -> None:
    rng = random.Random(9)
    leads = [random_lead(rng, f"L-{i}", converts=i % 3 == 0) for i in range(30)]
    path = tmp_path / "history.jsonl"
    write_events(path, sorted((e for lead in leads for e in lead), key=lambda e: e.ts))
    history = read_history(path, spec)
    table, _ = build_snapshots(history, spec, TrainingOptions(horizon_days=10, snapshot_every_days=2))
    conversions = {lead[0].lead_id: e.ts for lead in leads for e in lead if e.type == "converted"}
    assert len(table) > 50 and table.labels.sum() > 0
    for lead_id, at_ms in zip(table.lead_ids, table.at_ms, strict=True):
        assert at_ms < conversions.get(lead_id, history.end_ms + 1)
        assert at_ms + 10 * DAY_MS <= history.end_ms


def with_exits(spec: FeatureSpec, *exit_types: str) -> FeatureSpec:
    return FeatureSpec.model_validate({**spec.model_dump(), "exit_types": list(exit_types)})


def test_an_exited_lead_has_no_snapshot_at_or_after_its_exit(spec: FeatureSpec) -> None:
    exit_at = START_MS + 20 * DAY_MS
    events = [event("L-1", "page_view", START_MS + d * DAY_MS, d, category="docs") for d in range(0, 60, 3)]
    events = sorted([*events, event("L-1", "withdrawn", exit_at, 100)], key=lambda e: e.ts)
    options = TrainingOptions(snapshot_every_days=1, max_snapshots_per_lead=100)
    end = START_MS + 120 * DAY_MS
    exiting = with_exits(spec, "withdrawn")
    kept = lead_snapshots("L-1", events, end, exiting, options)
    assert kept and all(s.at_ms < exit_at for s in kept)
    # The same lead, with the exit type not declared, is sampled after it too: the exit is what stops it.
    assert any(s.at_ms >= exit_at for s in lead_snapshots("L-1", events, end, spec, options))
    times = [exit_at - 1, exit_at, exit_at + DAY_MS]
    assert [s.at_ms for s in snapshots_at("L-1", events, times, end, exiting, HORIZON_MS)] == [exit_at - 1]


def test_a_lead_that_exits_within_the_horizon_is_a_negative(spec: FeatureSpec) -> None:
    t = START_MS + DAY_MS
    exit_at = START_MS + 10 * DAY_MS
    end = START_MS + 200 * DAY_MS
    exiting = with_exits(spec, "withdrawn")
    base = [event("L-1", "demo_request", START_MS, 1), event("L-1", "withdrawn", exit_at, 2)]

    def label(events: list[Event], feature_spec: FeatureSpec) -> int:
        (snap,) = snapshots_at("L-1", sorted(events, key=lambda e: e.ts), [t], end, feature_spec, HORIZON_MS)
        return snap.label

    assert label(base, exiting) == 0
    # A conversion recorded after the exit (within the horizon) does not make it a positive: it cannot convert,
    converted_later = [*base, event("L-1", "converted", exit_at + 5 * DAY_MS, 3)]
    assert label(converted_later, exiting) == 0
    assert label(converted_later, spec) == 1  # (without the exit type declared it would be one)
    # while one before the exit does.
    assert label([*base, event("L-1", "converted", exit_at - DAY_MS, 3)], exiting) == 1


def test_snapshots_are_taken_only_inside_the_training_window(spec: FeatureSpec) -> None:
    rng = random.Random(11)
    start, end_window = START_MS + 20 * DAY_MS, START_MS + 50 * DAY_MS
    options = TrainingOptions(
        snapshot_every_days=1, max_snapshots_per_lead=5, window_start_ms=start, window_end_ms=end_window
    )
    end = START_MS + 150 * DAY_MS
    times = []
    for i in range(20):
        snaps = lead_snapshots(f"L-{i}", random_lead(rng, f"L-{i}"), end, spec, options)
        assert len(snaps) == 5  # the cap is taken inside the window, not before it
        times += [s.at_ms for s in snaps]
    assert min(times) >= start and max(times) < end_window
    assert max(times) - min(times) > 20 * DAY_MS  # spread over the window


def test_split_by_time_puts_earliest_rows_in_train_and_latest_in_test() -> None:
    at_ms = np.random.default_rng(0).integers(0, 10**9, size=1000)
    splits = split_by_time(at_ms, 0.15, 0.15)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [700, 150, 150]
    assert at_ms[splits["train"]].max() <= at_ms[splits["valid"]].min()
    assert at_ms[splits["valid"]].max() <= at_ms[splits["test"]].min()


def test_split_by_lead_keeps_a_leads_rows_together() -> None:
    rng = random.Random(12)
    lead_ids = [f"L-{rng.randrange(5000)}" for _ in range(30_000)]
    splits = split_by_lead(lead_ids, 0.15, 0.15)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(30_000))
    leads = {name: {lead_ids[i] for i in index} for name, index in splits.items()}
    assert not leads["train"] & leads["valid"] and not leads["train"] & leads["test"]
    assert not leads["valid"] & leads["test"]
    distinct = len(set(lead_ids))
    assert abs(len(leads["test"]) / distinct - 0.15) < 0.02 and abs(len(leads["valid"]) / distinct - 0.15) < 0.02
    # A lead stays where it is across runs, and a larger validation share takes no lead out of test.
    assert {lead_ids[i] for i in split_by_lead(lead_ids, 0.3, 0.15)["test"]} == leads["test"]


def test_the_split_method_is_an_option(spec: FeatureSpec) -> None:
    rng = random.Random(13)
    snaps = [s for i in range(40) for s in lead_snapshots(f"L-{i}", random_lead(rng, f"L-{i}"), START_MS + 150 * DAY_MS,
                                                          spec, TrainingOptions(snapshot_every_days=1))]  # fmt: skip
    lead_ids = [s.lead_id for s in snaps]
    table_args = (np.array([s.at_ms for s in snaps]), np.array([s.label for s in snaps]), [s.values for s in snaps])
    table = SnapshotTable(lead_ids, *table_args)
    by_time = split_rows(table, TrainingOptions())
    assert by_time.keys() == {"train", "valid", "test"}
    assert table.at_ms[by_time["train"]].max() <= table.at_ms[by_time["test"]].min()
    by_lead = split_rows(table, TrainingOptions(split=SplitMethod.LEAD))
    test_leads = {lead_ids[i] for i in by_lead["test"]}
    assert all(lead_ids[i] not in test_leads for i in by_lead["train"])


def test_rare_categories_share_an_other_bucket(spec: FeatureSpec) -> None:
    rows = [{"country": "US"}] * 10 + [{"country": "DE"}] * 6 + [{"country": "MT"}] * 2 + [{"country": None}]
    options = TrainingOptions(min_category_count=5)
    assert category_vocabularies(rows, ["country"], options) == {"country": ["US", "DE", OTHER_CATEGORY]}
    assert category_vocabularies(rows[:16], ["country"], options) == {"country": ["US", "DE"]}  # none rare
    capped = category_vocabularies(rows, ["country"], replace(options, max_categories=1))
    assert capped == {"country": ["US", OTHER_CATEGORY]}
    layout = FeatureLayout(("country",), category_vocabularies(rows, ["country"], options))
    codes = layout.encode([{"country": "MT"}, {"country": "FJ"}, {"country": "US"}, {"country": None}])[:, 0]
    assert codes[:3].tolist() == [2.0, 2.0, 0.0] and np.isnan(codes[3])  # rare and unseen: "other"; None: missing


def test_history_keeps_the_numeric_properties_the_fold_reads(tmp_path: Path, spec: FeatureSpec) -> None:
    watched = Signal(name="watched", types=("video_played",), half_life_ms=7 * DAY_MS, value="seconds")
    own = replace_signals(spec, (*spec.signals, watched))
    path = tmp_path / "history.jsonl"
    write_events(path, [event("L-1", "video_played", START_MS, 1, seconds=95, url="https://x/v", title="demo")])
    (replayed,), _ = read_history(path, own).lead_events("L-1")
    assert replayed.properties == {"seconds": 95}


# --- calibration and metrics ---------------------------------------------------------------------------------


def _overconfident_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logit = rng.normal(-2.0, 1.0, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return 1 / (1 + np.exp(-2.5 * logit)), labels  # the model's logit is 2.5x too confident


def test_isotonic_calibration_lowers_ece_on_held_out_rows() -> None:
    raw_fit, labels_fit = _overconfident_scores(5000, seed=1)
    raw_held, labels_held = _overconfident_scores(5000, seed=2)
    calibration = calibration_from_isotonic(fit_isotonic(raw_fit, labels_fit))
    calibrated = apply_calibration(calibration, raw_held)
    raw_ece = expected_calibration_error(labels_held, raw_held)
    calibrated_ece = expected_calibration_error(labels_held, calibrated)
    assert calibrated_ece < raw_ece / 2
    assert calibrated_ece < 0.03
    assert calibrated.min() > 0 and calibrated.max() < 1  # never a promise of 0% or 100%


def test_scorer_predict_equals_the_isotonic_models_predict(spec: FeatureSpec) -> None:
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(600, 2))
    labels = (matrix[:, 0] + rng.normal(size=600) > 1.5).astype(float)
    params = {"objective": "binary", "verbosity": -1, "num_threads": 1, "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(matrix, labels, feature_name=["a", "b"]), num_boost_round=20)
    isotonic = fit_isotonic(np.asarray(booster.predict(matrix[:300])), labels[:300])
    metadata = ModelMetadata(
        version="t",
        feature_names=["a", "b"],
        config_hash="x",
        conversion_type="converted",
        horizon_days=30,
        trained_at=EPOCH,
        training_window_start=EPOCH,
        training_window_end=EPOCH,
        seed=0,
        calibration=calibration_from_isotonic(isotonic),
    )
    held_out = np.vstack([matrix[300:], [[50.0, 50.0], [-50.0, -50.0]]])  # and outside the fitted range
    scored = Scorer(booster, metadata).predict(held_out)
    np.testing.assert_allclose(scored, isotonic.predict(booster.predict(held_out)), rtol=0, atol=1e-12)


def test_constant_calibration_still_has_two_knots() -> None:
    calibration = calibration_from_isotonic(fit_isotonic(np.array([0.2, 0.2, 0.2]), np.array([0.0, 1.0, 0.0])))
    assert len(calibration.raw) == 2
    np.testing.assert_allclose(apply_calibration(calibration, np.array([0.0, 0.5, 1.0])), 1 / 3)


def _few_positives_validation(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """A booster that ranks well (ROC-AUC ~0.85) on a validation split with ~35 positives."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.06).astype(np.float64)
    score = rng.normal(size=n) + 1.5 * labels
    return expit(score - 3.0), labels


def test_auto_calibration_keeps_the_ranking_where_isotonic_would_tie_few_positives() -> None:
    raw, labels = _few_positives_validation(seed=21)
    assert 20 <= labels.sum() <= 50
    chosen = choose_calibration(raw, labels, np.arange(len(raw)), CalibrationPolicy.AUTO, (-8.0, 3.0), seed=1)
    selection = chosen.selection
    isotonic = selection.candidates["isotonic"]
    # The case the rule is for: isotonic makes a few steps and loses ranking on rows it was not fitted to (by
    # more than the tolerance, counting the loss's standard error from fold to fold),
    assert isotonic["distinct_values"] < 30
    lost = isotonic["valid_roc_auc_lost"]
    assert lost == pytest.approx(selection.valid_roc_auc_uncalibrated - isotonic["valid_roc_auc"])
    assert lost > 0 and lost + isotonic["valid_roc_auc_lost_se"] > CALIBRATION_AUC_TOLERANCE
    # so auto serves a map that keeps it.
    assert selection.method in (CalibrationMethod.SIGMOID, CalibrationMethod.NONE)
    assert selection.valid_roc_auc >= selection.valid_roc_auc_uncalibrated - CALIBRATION_AUC_TOLERANCE
    held_raw, held_labels = _few_positives_validation(seed=22, n=20_000)
    served = apply_calibration(chosen.calibration, held_raw)
    assert roc_auc_score(held_labels, served) == pytest.approx(roc_auc_score(held_labels, held_raw), abs=1e-9)
    forced = choose_calibration(raw, labels, np.arange(len(raw)), CalibrationPolicy.ISOTONIC, (-8.0, 3.0), seed=1)
    assert forced.selection.method is CalibrationMethod.ISOTONIC  # asked for: given, and the report warns
    isotonic_served = apply_calibration(forced.calibration, held_raw)
    assert roc_auc_score(held_labels, isotonic_served) < roc_auc_score(held_labels, held_raw)


def test_auto_calibration_rejects_isotonic_ties_at_the_top_of_the_ranking() -> None:
    def validation(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        labels = (rng.random(n) < 0.08).astype(np.float64)
        return expit(2 * (rng.normal(size=n) + 1.5 * labels - 3.0)), labels

    raw, labels = validation(seed=0, n=4000)
    chosen = choose_calibration(raw, labels, np.arange(4000), CalibrationPolicy.AUTO, (-12.0, 8.0), seed=1)
    isotonic = chosen.selection.candidates["isotonic"]
    # With 300 positives isotonic keeps the ROC-AUC, but its steps tie the leads at the top, where PR-AUC looks.
    assert isotonic["valid_roc_auc_lost"] + isotonic["valid_roc_auc_lost_se"] <= CALIBRATION_AUC_TOLERANCE
    assert isotonic["valid_pr_auc_lost"] - isotonic["valid_pr_auc_lost_se"] > CALIBRATION_AUC_TOLERANCE
    assert chosen.selection.method is CalibrationMethod.SIGMOID
    held_raw, held_labels = validation(seed=1, n=20_000)
    forced = choose_calibration(raw, labels, np.arange(4000), CalibrationPolicy.ISOTONIC, (-12.0, 8.0), seed=1)
    raw_pr_auc = average_precision_score(held_labels, held_raw)
    assert average_precision_score(held_labels, apply_calibration(chosen.calibration, held_raw)) == pytest.approx(
        raw_pr_auc, abs=1e-12
    )
    isotonic_pr_auc = average_precision_score(held_labels, apply_calibration(forced.calibration, held_raw))
    assert isotonic_pr_auc < raw_pr_auc - CALIBRATION_AUC_TOLERANCE


def test_auto_calibration_fixes_an_overconfident_booster_on_plenty_of_data() -> None:
    raw_fit, labels_fit = _overconfident_scores(5000, seed=1)
    raw_held, labels_held = _overconfident_scores(5000, seed=2)
    chosen = choose_calibration(raw_fit, labels_fit, np.arange(5000), CalibrationPolicy.AUTO, (-25.0, 10.0), seed=1)
    assert chosen.selection.method is not CalibrationMethod.NONE
    candidates = chosen.selection.candidates
    assert candidates[chosen.selection.method]["valid_log_loss"] < candidates["none"]["valid_log_loss"]
    served = apply_calibration(chosen.calibration, raw_held)
    assert expected_calibration_error(labels_held, served) < expected_calibration_error(labels_held, raw_held) / 2


@pytest.mark.parametrize("stretch", [0.4, 2.5])
def test_sigmoid_knots_reproduce_the_fitted_logistic_within_1e6(stretch: float) -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(-2.0, 1.5, 4000)
    labels = (rng.random(4000) < expit(z)).astype(np.float64)
    raw = expit(z / stretch)  # a booster `stretch` times under- or over-confident
    sigmoid = fit_sigmoid(raw, labels)
    assert sigmoid.slope == pytest.approx(stretch, rel=0.15)
    calibration = calibration_from_sigmoid(sigmoid, -20.0, 12.0)
    assert calibration.method is CalibrationMethod.SIGMOID
    assert np.all(np.diff(calibration.raw) > 0) and np.all(np.diff(calibration.calibrated) > 0)  # strictly up
    assert len(calibration.raw) < 5000
    everywhere = expit(np.linspace(-20.0, 12.0, 200_001))
    gap = np.abs(apply_calibration(calibration, everywhere) - sigmoid(everywhere))
    assert gap.max() < 1e-6


def test_the_sigmoid_fit_is_platts_logistic_regression() -> None:
    raw, labels = _overconfident_scores(3000, seed=5)
    sigmoid = fit_sigmoid(raw, labels)
    # The same fit by scikit-learn: each row a positive with weight t and a negative with weight 1 - t, where t
    # is Platt's smoothed target.
    positives, negatives = labels.sum(), len(labels) - labels.sum()
    target = np.where(labels > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    z = logit(raw)[:, None]
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(
        np.vstack([z, z]), np.r_[np.ones(3000), np.zeros(3000)], sample_weight=np.r_[target, 1 - target]
    )
    assert sigmoid.slope == pytest.approx(reference.coef_[0, 0], abs=1e-5)
    assert sigmoid.intercept == pytest.approx(reference.intercept_[0], abs=1e-5)


def test_raw_logit_bounds_contain_every_raw_score_the_booster_can_give() -> None:
    rng = np.random.default_rng(6)
    matrix = rng.normal(size=(2000, 3))
    labels = (matrix[:, 0] + rng.normal(size=2000) > 2).astype(float)  # a low base rate: a large starting score
    params = {"objective": "binary", "verbosity": -1, "num_threads": 1, "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(matrix, labels), num_boost_round=40)
    low, high = raw_logit_bounds(booster, 40)
    probes = np.vstack([rng.normal(scale=5, size=(20_000, 3)), matrix])
    scores = np.asarray(booster.predict(probes, raw_score=True))
    assert low <= scores.min() and scores.max() <= high
    assert high - low < 3 * (scores.max() - scores.min())  # a bound, not a blanket


def test_a_scorer_serves_a_sigmoid_calibration_as_fitted(spec: FeatureSpec) -> None:
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(1000, 2))
    labels = (matrix[:, 0] + rng.normal(size=1000) > 1.5).astype(float)
    params = {"objective": "binary", "verbosity": -1, "num_threads": 1, "deterministic": True}
    booster = lgb.train(params, lgb.Dataset(matrix, labels, feature_name=["a", "b"]), num_boost_round=30)
    sigmoid = fit_sigmoid(np.asarray(booster.predict(matrix[:500])), labels[:500])
    metadata = ModelMetadata(
        version="t",
        feature_names=["a", "b"],
        config_hash="x",
        conversion_type="converted",
        horizon_days=30,
        trained_at=EPOCH,
        training_window_start=EPOCH,
        training_window_end=EPOCH,
        seed=0,
        calibration=calibration_from_sigmoid(sigmoid, *raw_logit_bounds(booster, 30)),
    )
    held_out = np.vstack([matrix[500:], [[50.0, 50.0], [-50.0, -50.0]]])
    served = Scorer(booster, ModelMetadata.model_validate_json(metadata.model_dump_json())).predict(held_out)
    np.testing.assert_allclose(served, sigmoid(np.asarray(booster.predict(held_out))), rtol=0, atol=1e-6)


def test_metadata_written_before_these_fields_still_loads() -> None:
    old = {
        "version": "m20261122T154406Z-f252bb",
        "feature_names": ["a"],
        "config_hash": "f252bb0717fad9e8",
        "conversion_type": "converted",
        "horizon_days": 30.0,
        "trained_at": "2026-11-22T15:44:06Z",
        "training_window_start": "2026-08-01T00:00:00Z",
        "training_window_end": "2026-10-29T00:00:00Z",
        "seed": 7,
        "rows": {"train": 10, "valid": 5, "test": 5},
        "metrics": {"roc_auc": 0.8},
        "baseline_metrics": {"roc_auc": 0.66},
        "calibration": {"raw": [0.0, 1.0], "calibrated": [0.1, 0.9]},
        "training_data": {"events": 100},
    }
    metadata = ModelMetadata.model_validate_json(orjson.dumps(old))
    assert metadata.calibration is not None and metadata.calibration.method is CalibrationMethod.ISOTONIC
    assert metadata.positives == {} and metadata.warnings == [] and metadata.calibration_selection is None
    assert metadata.logistic_baseline_metrics == {}


def test_metrics_of_a_perfect_ranking() -> None:
    labels = np.array([0] * 90 + [1] * 10, dtype=float)
    scores = np.linspace(0, 1, 100)
    metrics = score_metrics(labels, scores, np.clip(scores, 0.01, 0.99))
    assert metrics["roc_auc"] == pytest.approx(1.0) and metrics["pr_auc"] == pytest.approx(1.0)
    assert metrics["top_decile_lift"] == pytest.approx(10.0)
    assert metrics["top_decile_capture"] == pytest.approx(1.0)
    assert metrics["base_rate"] == pytest.approx(0.1)
    assert top_fraction_mask(np.zeros(5)).sum() == 1  # ceil(10% of 5)


def test_points_score_weighs_decayed_signals_by_points(spec: FeatureSpec) -> None:
    events = [event("L-1", "demo_request", START_MS, 1), event("L-1", "page_view", START_MS, 2, category="pricing")]
    state = fold(LeadState(), events, spec)
    points = {s.name: s.points for s in spec.signals}
    assert points_score(feature_values(state, START_MS, spec), spec) == pytest.approx(
        points["demo_request"] + points["page_view"] + points["pricing_view"]
    )
    half_life = next(s.half_life_ms for s in spec.signals if s.name == "demo_request")
    later = feature_values(state, START_MS + half_life, spec)
    assert later["demo_request_decayed"] == pytest.approx(0.5)


# --- the whole run -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "events.jsonl.gz"
    write_history(SimulationSpec(leads=1200, days=80, seed=3), path)
    return path


@pytest.fixture(scope="module")
def trained(small_history: Path, spec: FeatureSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    train_model(small_history, spec, out, SMALL_OPTIONS, progress=False)
    return out


def test_trained_artifact_loads_and_matches_the_config(trained: Path, spec: FeatureSpec) -> None:
    scorer = load_scorer(trained, spec)
    metadata = scorer.metadata
    assert metadata.version == "test-model"
    assert metadata.config_hash == spec.config_hash
    assert set(metadata.rows) == {"train", "valid", "test"} and min(metadata.rows.values()) > 100
    assert metadata.training_window_start < metadata.training_window_end
    assert set(metadata.categories) == set(spec.profile_attributes)
    assert "software" in metadata.categories["industry"]
    for key in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift", "top_decile_capture"):
        assert key in metadata.metrics and key in metadata.baseline_metrics
    assert metadata.metrics["base_rate"] == metadata.baseline_metrics["base_rate"]  # the same rows
    assert metadata.metrics["roc_auc"] > 0.6


def test_training_is_deterministic_for_a_seed(
    trained: Path, small_history: Path, spec: FeatureSpec, tmp_path: Path
) -> None:
    train_model(small_history, spec, tmp_path, replace(SMALL_OPTIONS, report=False), progress=False)
    assert (tmp_path / MODEL_FILE).read_bytes() == (trained / MODEL_FILE).read_bytes()
    first = orjson.loads((trained / METADATA_FILE).read_bytes())
    second = orjson.loads((tmp_path / METADATA_FILE).read_bytes())
    first.pop("trained_at"), second.pop("trained_at")
    assert first == second


def test_an_evaluation_report_is_written_next_to_the_model(trained: Path) -> None:
    report = (trained / "report.md").read_text()
    assert report.startswith("# Model test-model")
    assert "| ROC AUC |" in report and "points baseline" in report
    for plot in ("roc.png", "pr.png", "calibration.png", "gains.png", "importance.png", "scores.png"):
        assert (trained / plot).read_bytes().startswith(b"\x89PNG")
        assert f"]({plot})" in report


def test_the_metadata_records_positives_calibration_and_baselines(trained: Path, small_history: Path) -> None:
    metadata = Scorer.load(trained).metadata
    spec = load_feature_spec()
    table, _ = build_snapshots(read_history(small_history, spec), spec, SMALL_OPTIONS)
    splits = split_rows(table, SMALL_OPTIONS)
    assert metadata.positives == {name: int(table.labels[index].sum()) for name, index in splits.items()}
    assert metadata.rows == {name: len(index) for name, index in splits.items()}
    selection = metadata.calibration_selection
    assert selection is not None and selection.requested == "auto"
    assert metadata.calibration is None or metadata.calibration.method is selection.method
    assert selection.valid_roc_auc >= selection.valid_roc_auc_uncalibrated - CALIBRATION_AUC_TOLERANCE
    assert set(selection.candidates) == {"none", "sigmoid", "isotonic"}
    for metrics in (metadata.metrics, metadata.baseline_metrics, metadata.logistic_baseline_metrics):
        for metric in ("roc_auc", "pr_auc"):
            assert metrics[f"{metric}_ci_low"] <= metrics[metric] <= metrics[f"{metric}_ci_high"]
    assert metadata.logistic_baseline_metrics["base_rate"] == metadata.metrics["base_rate"]  # the same rows
    assert "roc_auc_uncalibrated" in metadata.metrics and "log_loss_uncalibrated" in metadata.metrics
    assert metadata.training_settings["split"] == "time" and metadata.training_settings["calibration"] == "auto"


def test_the_report_shows_counts_intervals_baselines_bins_and_warnings(trained: Path) -> None:
    metadata = Scorer.load(trained).metadata
    report = (trained / "report.md").read_text()
    # Warnings come first.
    assert report.index("## Warnings") < report.index("## Data") < report.index("## Test metrics")
    small = metadata.positives["valid"] < 100 or metadata.positives["test"] < 100
    assert (WarningKind.SMALL_DATA in [w.kind for w in metadata.warnings]) == small
    for warning in metadata.warnings:
        assert f"**{warning.title}**" in report
    for split, name in (("train", "train"), ("valid", "validation"), ("test", "test")):
        assert f"| {name} | {metadata.rows[split]:,} | {metadata.positives[split]:,} |" in report
    metric_row = next(line for line in report.splitlines() if line.startswith("| ROC AUC |"))
    for metrics in (metadata.metrics, metadata.baseline_metrics, metadata.logistic_baseline_metrics):
        low, high = metrics["roc_auc_ci_low"], metrics["roc_auc_ci_high"]
        assert f"{metrics['roc_auc']:.4f} [{low:.3f}, {high:.3f}]" in metric_row
    assert "| metric | model | uncalibrated | points baseline | logistic regression |" in report
    assert "one-hot" in report  # how the logistic regression treats categoricals is said
    selection = metadata.calibration_selection
    assert selection is not None and f"**{selection.method}** (requested: auto)" in report
    # The calibration table: ten bins whose rows and positives add up to the test split.
    start = report.index("| probability | rows | converting |")
    bins = [line.split("|") for line in report[start:].splitlines()[2:12]]
    assert len(bins) == 10 and all(len(cells) == 7 for cells in bins)
    assert sum(int(cells[2].replace(",", "")) for cells in bins) == metadata.rows["test"]
    assert sum(int(cells[3].replace(",", "")) for cells in bins) == metadata.positives["test"]


def test_an_upside_down_points_rule_is_warned_about_in_the_report_and_the_log(
    small_history: Path, spec: FeatureSpec, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = spec.model_dump()
    data["signals"] = [{**signal, "points": -signal["points"]} for signal in data["signals"]]
    upside_down = FeatureSpec.model_validate(data)
    with caplog.at_level("WARNING", logger="models.training"):
        metadata = train_model(small_history, upside_down, tmp_path, SMALL_OPTIONS, progress=False)
    assert metadata.baseline_metrics["roc_auc"] < 0.5
    (warning,) = [w for w in metadata.warnings if w.kind is WarningKind.BASELINE_UPSIDE_DOWN]
    assert "points baseline's test ROC-AUC" in warning.message
    assert warning.message in caplog.text
    report = (tmp_path / "report.md").read_text()
    assert report.index(f"**{warning.title}**") < report.index("## Data")


def test_too_few_positives_in_a_split_is_refused_naming_it(
    small_history: Path, spec: FeatureSpec, tmp_path: Path
) -> None:
    table, _ = build_snapshots(read_history(small_history, spec), spec, SMALL_OPTIONS)
    positives = {name: int(table.labels[index].sum()) for name, index in split_rows(table, SMALL_OPTIONS).items()}
    assert positives["train"] > positives["valid"] + 1
    options = replace(SMALL_OPTIONS, min_positives=positives["valid"] + 1)
    with pytest.raises(ValueError, match=f"the valid split has {positives['valid']} positive snapshots") as refused:
        train_model(small_history, spec, tmp_path, options, progress=False)
    assert f"min_positives {positives['valid'] + 1}" in str(refused.value)
    assert not (tmp_path / MODEL_FILE).exists()


def test_training_by_lead_with_isotonic_calibration_as_configured(
    small_history: Path, spec: FeatureSpec, tmp_path: Path
) -> None:
    options = replace(SMALL_OPTIONS, split=SplitMethod.LEAD, calibration=CalibrationPolicy.ISOTONIC, report=False)
    metadata = train_model(small_history, spec, tmp_path, options, progress=False)
    assert metadata.training_settings["split"] == "lead"
    assert metadata.calibration is not None and metadata.calibration.method is CalibrationMethod.ISOTONIC
    assert metadata.metrics["roc_auc"] > 0.6
    assert not (tmp_path / "report.md").exists()


def test_a_config_with_different_signals_is_refused_naming_the_features(trained: Path, spec: FeatureSpec) -> None:
    chat = Signal(name="chat", types=("chat_started",), half_life_ms=7 * DAY_MS)
    changed = replace_signals(spec, (*spec.signals[1:], chat))
    scorer = Scorer.load(trained)
    with pytest.raises(ModelRefused) as refused:
        scorer.check_compatible(changed)
    message = str(refused.value)
    assert "chat_decayed" in message and "email_open_decayed" in message


def test_a_history_too_short_for_the_horizon_is_refused_with_a_hint(
    small_history: Path, spec: FeatureSpec, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="horizon"):
        train_model(small_history, spec, tmp_path, replace(SMALL_OPTIONS, horizon_days=79.9), progress=False)
    assert not (tmp_path / MODEL_FILE).exists()


def test_the_shipped_default_model_loads_with_the_shipped_config(spec: FeatureSpec) -> None:
    scorer = load_scorer(DEFAULT_ARTIFACT, spec)
    assert scorer.metadata.seed == 7
    assert (DEFAULT_ARTIFACT / MODEL_FILE).stat().st_size < 2_000_000


def replace_signals(spec: FeatureSpec, signals: tuple[Signal, ...]) -> FeatureSpec:
    names = {s.name for s in signals}
    data = spec.model_dump()
    data["signals"] = [s.model_dump() for s in signals]
    data["high_intent"] = [n for n in spec.high_intent if n in names]
    return FeatureSpec.model_validate(data)
