"""Evaluation: bootstrap intervals over leads, the logistic-regression baseline, calibration bins, warnings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from models.evaluation import (
    DOMINANT_FEATURE_SHARE,
    SMALL_DATA_POSITIVES,
    _RankedScores,
    bootstrap_intervals,
    calibration_bins,
    expected_calibration_error,
    fit_logistic_baseline,
    training_warnings,
)
from models.vector import OTHER_CATEGORY, FeatureLayout
from schemas.model import CalibrationMethod, CalibrationSelection, WarningKind


def _scored_rows(n: int, seed: int, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.1).astype(np.float64)
    scores = np.round(rng.normal(size=n) + signal * labels, 1)  # rounded: many ties
    return labels, scores


# --- bootstrap -----------------------------------------------------------------------------------------------


def test_weighted_roc_and_pr_auc_equal_scikit_learn_with_sample_weights() -> None:
    labels, scores = _scored_rows(3000, seed=1)
    ranked = _RankedScores.of(scores)
    rng = np.random.default_rng(2)
    for weights in (np.ones(3000), rng.integers(0, 4, 3000).astype(np.float64)):
        measured = ranked.roc_pr(labels, weights)
        assert measured is not None
        roc_auc, pr_auc = measured
        assert roc_auc == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights), abs=1e-12)
        assert pr_auc == pytest.approx(average_precision_score(labels, scores, sample_weight=weights), abs=1e-12)
    assert ranked.roc_pr(np.zeros(3000), np.ones(3000)) is None  # one class: no AUC


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_leads() -> None:
    widths = []
    for n in (400, 6400):
        labels, scores = _scored_rows(n, seed=3)
        interval = bootstrap_intervals(labels, {"model": scores}, np.arange(n), seed=0)["model"]
        for metric, value in (
            ("roc_auc", roc_auc_score(labels, scores)),
            ("pr_auc", average_precision_score(labels, scores)),
        ):
            assert interval[f"{metric}_ci_low"] < value < interval[f"{metric}_ci_high"]
        widths.append(interval["roc_auc_ci_high"] - interval["roc_auc_ci_low"])
    assert widths[1] < widths[0] / 2.5  # 16x the leads: about 4x narrower


def test_a_leads_rows_are_resampled_together() -> None:
    labels, scores = _scored_rows(500, seed=4)
    once = bootstrap_intervals(labels, {"model": scores}, np.arange(500), seed=5)["model"]
    # Every lead five times over: resampling leads gives the very same intervals as the rows once,
    copies = np.repeat(np.arange(500), 5)
    grouped = bootstrap_intervals(labels[copies], {"model": scores[copies]}, copies, seed=5)["model"]
    assert grouped == pytest.approx(once, abs=1e-12)
    # while resampling the rows one by one would pretend there is five times the data.
    by_row = bootstrap_intervals(labels[copies], {"model": scores[copies]}, np.arange(2500), seed=5)["model"]
    assert by_row["roc_auc_ci_high"] - by_row["roc_auc_ci_low"] < 0.6 * (
        once["roc_auc_ci_high"] - once["roc_auc_ci_low"]
    )


def test_every_score_sees_the_same_resamples_and_a_seed_repeats_them() -> None:
    labels, scores = _scored_rows(800, seed=6)
    intervals = bootstrap_intervals(labels, {"a": scores, "b": scores.copy()}, np.arange(800), seed=1)
    assert intervals["a"] == intervals["b"]
    assert bootstrap_intervals(labels, {"a": scores}, np.arange(800), seed=1)["a"] == intervals["a"]
    assert bootstrap_intervals(labels, {"a": scores}, np.arange(800), seed=2)["a"] != intervals["a"]


# --- logistic regression baseline ----------------------------------------------------------------------------


def test_the_logistic_baseline_uses_numbers_with_gaps_and_one_hot_categories() -> None:
    rng = np.random.default_rng(7)
    n = 4000
    engagement = rng.exponential(2.0, n)
    country = rng.integers(0, 3, n).astype(np.float64)  # vocabulary codes
    logit = -3 + 0.8 * engagement + np.where(country == 2, 1.5, 0.0)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    engagement[rng.random(n) < 0.2] = np.nan  # missing values are imputed, not fatal
    country[rng.random(n) < 0.1] = np.nan
    empty = np.full(n, np.nan)  # a feature never seen in training
    matrix = np.column_stack([engagement, empty, country])
    layout = FeatureLayout(("engagement", "never_seen", "country"), {"country": ["US", "DE", "FR", OTHER_CATEGORY]})
    model = fit_logistic_baseline(matrix[:3000], labels[:3000], layout)
    held_out = matrix[3000:].copy()
    held_out[:10, 2] = 3.0  # a category code not seen in training is ignored, not an error
    probability = model.predict_proba(held_out)[:, 1]
    assert roc_auc_score(labels[3000:], probability) > 0.75
    assert probability.min() > 0 and probability.max() < 1


# --- calibration bins ----------------------------------------------------------------------------------------


def test_calibration_bins_count_rows_and_positives_in_the_eces_bins() -> None:
    rng = np.random.default_rng(8)
    probabilities = rng.beta(1, 6, 5000)
    labels = (rng.random(5000) < probabilities).astype(np.float64)
    table = calibration_bins(labels, probabilities)
    assert len(table) == 10
    assert sum(row["rows"] for row in table) == 5000
    assert sum(row["positives"] for row in table) == labels.sum()
    first = table[0]
    in_first = probabilities < 0.1
    assert first["rows"] == in_first.sum() and first["positives"] == labels[in_first].sum()
    assert first["mean_predicted"] == pytest.approx(probabilities[in_first].mean())
    # The ECE is these bins' |observed - predicted| weighted by their rows.
    filled = [row for row in table if row["rows"]]
    ece = sum(row["rows"] * abs(row["observed_rate"] - row["mean_predicted"]) for row in filled) / 5000
    assert ece == pytest.approx(expected_calibration_error(labels, probabilities))
    assert np.isnan(calibration_bins(np.zeros(3), np.full(3, 0.05))[9]["observed_rate"])  # empty bin


# --- warnings ------------------------------------------------------------------------------------------------

_HEALTHY_POSITIVES = {"train": 2000, "valid": 400, "test": 400}
_HEALTHY_METRICS = {"roc_auc": 0.80, "roc_auc_uncalibrated": 0.801}
_HEALTHY_BASELINES = {"points": {"roc_auc": 0.65}, "logistic regression": {"roc_auc": 0.75}}
_HEALTHY_IMPORTANCE = {"a": 0.3, "b": 0.3, "c": 0.4}


def _selection(roc_auc_lost: float = 0.0, pr_auc_lost: float = 0.0) -> CalibrationSelection:
    return CalibrationSelection(
        requested="auto",
        method=CalibrationMethod.ISOTONIC,
        tolerance=0.005,
        valid_roc_auc_uncalibrated=0.80,
        valid_roc_auc=0.80 - roc_auc_lost,
        candidates={"isotonic": {"valid_roc_auc_lost": roc_auc_lost, "valid_pr_auc_lost": pr_auc_lost}},
    )


def _kinds(**changes: object) -> list[WarningKind]:
    arguments: dict[str, object] = {
        "positives": _HEALTHY_POSITIVES,
        "metrics": _HEALTHY_METRICS,
        "baselines": _HEALTHY_BASELINES,
        "importance": _HEALTHY_IMPORTANCE,
        "calibration": _selection(),
    } | changes
    return [warning.kind for warning in training_warnings(**arguments)]  # type: ignore[arg-type]


def test_a_healthy_model_has_no_warnings() -> None:
    assert _kinds() == []


def test_each_warning_fires_on_its_own_condition() -> None:
    few = SMALL_DATA_POSITIVES - 1
    assert _kinds(positives={"train": 2000, "valid": 400, "test": few}) == [WarningKind.SMALL_DATA]
    assert _kinds(positives={"train": 2000, "valid": few, "test": 400}) == [WarningKind.SMALL_DATA]
    assert _kinds(positives={"train": 50, "valid": 400, "test": 400}) == []  # train is not judged on
    upside_down = {"points": {"roc_auc": 0.45}, "logistic regression": {"roc_auc": 0.75}}
    assert _kinds(baselines=upside_down) == [WarningKind.BASELINE_UPSIDE_DOWN]
    beaten = {"points": {"roc_auc": 0.65}, "logistic regression": {"roc_auc": 0.81}}
    assert _kinds(baselines=beaten) == [WarningKind.NOT_BETTER_THAN_BASELINE]
    dominant = {"a": DOMINANT_FEATURE_SHARE + 0.01, "b": 1 - DOMINANT_FEATURE_SHARE - 0.01}
    assert _kinds(importance=dominant) == [WarningKind.DOMINANT_FEATURE]
    lost_ranking = [WarningKind.CALIBRATION_LOST_RANKING]
    assert _kinds(calibration=_selection(roc_auc_lost=0.01)) == lost_ranking
    assert _kinds(calibration=_selection(pr_auc_lost=0.03)) == lost_ranking
    assert _kinds(calibration=_selection(roc_auc_lost=0.004, pr_auc_lost=0.004)) == []  # within the tolerance
    assert _kinds(metrics={"roc_auc": 0.79, "roc_auc_uncalibrated": 0.80}) == lost_ranking
    assert _kinds(metrics={**_HEALTHY_METRICS, "pr_auc": 0.23, "pr_auc_uncalibrated": 0.26}) == lost_ranking
    assert _kinds(metrics={"roc_auc": 0.797, "roc_auc_uncalibrated": 0.80}) == []


def test_warnings_name_the_figures_behind_them() -> None:
    (small,) = training_warnings(
        {"train": 900, "valid": 34, "test": 41}, _HEALTHY_METRICS, _HEALTHY_BASELINES, _HEALTHY_IMPORTANCE, None
    )
    assert "34 in validation" in small.message and "41 in test" in small.message
    (dominant,) = training_warnings(
        _HEALTHY_POSITIVES, _HEALTHY_METRICS, _HEALTHY_BASELINES, {"job_title": 0.55, "x": 0.45}, None
    )
    assert "`job_title`" in dominant.title and "55%" in dominant.message
    (lost,) = training_warnings(
        _HEALTHY_POSITIVES,
        {"roc_auc": 0.80, "roc_auc_uncalibrated": 0.80, "pr_auc": 0.234, "pr_auc_uncalibrated": 0.264},
        _HEALTHY_BASELINES,
        _HEALTHY_IMPORTANCE,
        _selection(pr_auc_lost=0.026),
    )
    assert "0.026 of PR-AUC on validation (cross-fitted), 0.030 of PR-AUC on test" in lost.message
