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

from app.simulator import SimulationSpec, write_history
from models.evaluation import expected_calibration_error, points_score, score_metrics, top_fraction_mask
from models.scoring import METADATA_FILE, MODEL_FILE, ModelRefused, Scorer, load_scorer
from models.spec import FeatureSpec, Signal, load_feature_spec
from models.state import DAY_MS, LeadState, fold
from models.training import (
    TrainingOptions,
    apply_calibration,
    build_snapshots,
    calibration_from_isotonic,
    fit_isotonic,
    lead_snapshots,
    read_history,
    snapshots_at,
    split_by_time,
    train_model,
)
from models.vector import feature_values
from schemas.events import Event
from schemas.model import ModelMetadata

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
START_MS = 1_785_542_400_000  # 2026-08-01T00:00:00Z
HOUR_MS = 3_600_000
HORIZON_MS = 30 * DAY_MS
DEFAULT_ARTIFACT = Path(__file__).resolve().parent.parent / "models" / "artifacts" / "default"

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


def test_split_by_time_puts_earliest_rows_in_train_and_latest_in_test() -> None:
    at_ms = np.random.default_rng(0).integers(0, 10**9, size=1000)
    splits = split_by_time(at_ms, 0.15, 0.15)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [700, 150, 150]
    assert at_ms[splits["train"]].max() <= at_ms[splits["valid"]].min()
    assert at_ms[splits["valid"]].max() <= at_ms[splits["test"]].min()


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
