"""How good a conversion score is: metrics with bootstrap intervals against the classic points baseline and a
logistic regression, the warnings a report leads with, and the evaluation report itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from models.scoring import REPORT_FILE
from models.spec import FeatureSpec
from models.vector import FeatureLayout, FeatureValue
from schemas.model import CalibrationSelection, ModelMetadata, TrainingWarning, WarningKind

ECE_BINS = 10
TOP_FRACTION = 0.10
# Percentile intervals over resampled leads; between 500 and 2,000 resamples their ends moved by ~0.002 ROC-AUC.
BOOTSTRAP_RESAMPLES = 500
CONFIDENCE_LEVEL = 0.95
# Fewer positives than this in validation or test: a metric's interval is several points of ROC-AUC wide.
SMALL_DATA_POSITIVES = 100
# One feature with more of the total split gain than this is worth a look: a leak (a field set when a lead
# converts) or a proxy the model leans on.
DOMINANT_FEATURE_SHARE = 0.40
# log_loss of a probability of exactly 0 or 1 that turns out wrong is infinite; clip like sklearn used to.
_PROBABILITY_EPS = 1e-15


def points_score(values: Mapping[str, FeatureValue], spec: FeatureSpec) -> float:
    """The classic points score: each signal's points times its decayed value at the same instant."""
    total = 0.0
    for signal in spec.signals:
        decayed = values.get(f"{signal.name}_decayed")
        if isinstance(decayed, float | int):
            total += signal.points * float(decayed)
    return total


def _bin_index(probabilities: np.ndarray, bins: int) -> np.ndarray:
    index: np.ndarray = np.clip((probabilities * bins).astype(int), 0, bins - 1)
    return index


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |observed rate - mean predicted| over equal-width probability bins, weighted by bin size."""
    if len(labels) == 0:
        return 0.0
    index = _bin_index(probabilities, bins)
    total = 0.0
    for b in range(bins):
        in_bin = index == b
        count = int(in_bin.sum())
        if count:
            total += count * abs(float(labels[in_bin].mean()) - float(probabilities[in_bin].mean()))
    return total / len(labels)


def top_fraction_mask(scores: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """The ceil(fraction * n) highest scores; ties broken by row order so the result is deterministic."""
    count = int(np.ceil(fraction * len(scores)))
    order = np.argsort(-scores, kind="stable")
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:count]] = True
    return mask


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Metrics that only need an ordering of the leads (any monotone score will do)."""
    _require_both_classes(labels)
    base_rate = float(labels.mean())
    top = top_fraction_mask(scores)
    top_rate = float(labels[top].mean())
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "pr_auc": float(average_precision_score(labels, scores)),
        "top_decile_lift": top_rate / base_rate,
        "top_decile_capture": float(labels[top].sum() / labels.sum()),
        "base_rate": base_rate,
    }


def probability_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Metrics that read the score as a probability of converting within the horizon."""
    clipped = np.clip(probabilities, _PROBABILITY_EPS, 1 - _PROBABILITY_EPS)
    return {
        "log_loss": float(log_loss(labels, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(labels, probabilities)),
        "ece": expected_calibration_error(labels, probabilities),
    }


def score_metrics(labels: np.ndarray, scores: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Ranking metrics of `scores` and probability metrics of `probabilities` (the same rows)."""
    return {**ranking_metrics(labels, scores), **probability_metrics(labels, probabilities)}


def _require_both_classes(labels: np.ndarray) -> None:
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        raise ValueError(
            f"cannot evaluate on {len(labels)} rows that are all {'positive' if positives else 'negative'}; "
            "use a longer history or more leads"
        )


# --- confidence intervals ------------------------------------------------------------------------------------


def bootstrap_intervals(
    labels: np.ndarray,
    scores: Mapping[str, np.ndarray],
    groups: np.ndarray,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = CONFIDENCE_LEVEL,
) -> dict[str, dict[str, float]]:
    """Per named score, percentile bootstrap intervals of its ROC-AUC and PR-AUC (`roc_auc_ci_low`, ...).

    Leads (`groups`, one per row) are resampled, not rows: a lead's snapshots are alike, and resampling them one
    by one would make the intervals too narrow. Every score sees the same resamples. A resample is a weight per
    row (how many times its lead was drawn), and the metrics are computed weighted, which equals computing them
    on the rows repeated (tests hold them to scikit-learn's).
    """
    _, lead_of_row = np.unique(groups, return_inverse=True)
    leads = int(lead_of_row.max()) + 1 if len(lead_of_row) else 0
    rng = np.random.default_rng(seed)
    weights = [np.bincount(rng.integers(0, leads, leads), minlength=leads)[lead_of_row] for _ in range(resamples)]
    tail = (1 - level) / 2
    intervals: dict[str, dict[str, float]] = {}
    for name, values in scores.items():
        ranked = _RankedScores.of(values)
        measured = [ranked.roc_pr(labels, w.astype(np.float64)) for w in weights]
        kept = np.array([m for m in measured if m is not None])  # a resample with one class has no AUC
        if len(kept) == 0:
            intervals[name] = {}
            continue
        low, high = np.quantile(kept, [tail, 1 - tail], axis=0)
        intervals[name] = {
            "roc_auc_ci_low": float(low[0]),
            "roc_auc_ci_high": float(high[0]),
            "pr_auc_ci_low": float(low[1]),
            "pr_auc_ci_high": float(high[1]),
        }
    return intervals


@dataclass(frozen=True)
class _RankedScores:
    """Rows grouped by distinct score, highest first: a weighted ROC-AUC and PR-AUC is then two bincounts."""

    group: np.ndarray  # per row: the rank of its score among the distinct scores, 0 = highest
    groups: int

    @classmethod
    def of(cls, scores: np.ndarray) -> _RankedScores:
        distinct, group = np.unique(-np.asarray(scores, dtype=np.float64), return_inverse=True)
        return cls(group.ravel(), len(distinct))

    def roc_pr(self, labels: np.ndarray, weights: np.ndarray) -> tuple[float, float] | None:
        """(ROC-AUC, average precision) of the rows weighted by `weights`; None without both classes."""
        true = np.bincount(self.group, weights=weights * labels, minlength=self.groups)
        false = np.bincount(self.group, weights=weights * (1 - labels), minlength=self.groups)
        true_above, false_above = np.cumsum(true), np.cumsum(false)
        positives, negatives = float(true_above[-1]), float(false_above[-1])
        if positives <= 0 or negatives <= 0:
            return None
        # A positive outranks the negatives below its score and half of those tied with it.
        roc_auc = float(np.sum(true * (negatives - false_above + 0.5 * false))) / (positives * negatives)
        # Average precision as scikit-learn defines it: precision at each distinct score, weighted by recall gained.
        taken = true_above + false_above
        precision = np.divide(true_above, taken, out=np.zeros_like(true_above), where=taken > 0)
        return roc_auc, float(np.sum(true * precision)) / positives


# --- the logistic-regression baseline ------------------------------------------------------------------------

LOGISTIC_BASELINE = (
    "a logistic regression (L2, C=1) trained on the train split with the model's own input columns: numeric "
    "features with missing values imputed by the training median plus an is-missing indicator, then standardised; "
    "profile attributes one-hot encoded over the model's vocabularies, missing as a category of its own"
)


def fit_logistic_baseline(matrix: np.ndarray, labels: np.ndarray, layout: FeatureLayout) -> Pipeline:
    """The logistic-regression baseline (LOGISTIC_BASELINE) on model input rows of `layout`."""
    categorical = [i for i, name in enumerate(layout.names) if name in layout.categories]
    numeric = [i for i, name in enumerate(layout.names) if name not in layout.categories]
    columns = ColumnTransformer(
        [
            (
                "numeric",
                make_pipeline(
                    SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True), StandardScaler()
                ),
                numeric,
            ),
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value=-1.0, keep_empty_features=True),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categorical,
            ),
        ]
    )
    model = make_pipeline(columns, LogisticRegression(C=1.0, max_iter=5000))
    model.fit(matrix, labels)
    return model


# --- warnings ------------------------------------------------------------------------------------------------


def training_warnings(
    positives: Mapping[str, int],
    metrics: Mapping[str, float],
    baselines: Mapping[str, Mapping[str, float]],
    importance: Mapping[str, float],
    calibration: CalibrationSelection | None,
) -> list[TrainingWarning]:
    """What a reader of the metrics should know first: too few positives, a baseline that ranks upside down, a
    model no better than a baseline, one feature carrying the model, a calibration that lost ranking."""
    warnings = []
    small = {split: positives[split] for split in ("valid", "test") if positives.get(split, 0) < SMALL_DATA_POSITIVES}
    if small:
        counts = ", ".join(
            f"{count} in {'validation' if split == 'valid' else split}" for split, count in small.items()
        )
        warnings.append(
            TrainingWarning(
                kind=WarningKind.SMALL_DATA,
                title=f"small data ({counts.replace(' in ', ' ')} positives)",
                message=f"few converting snapshots ({counts}; under {SMALL_DATA_POSITIVES}): metrics on them move by "
                "several points from one sample to the next, so read the confidence intervals, not the point "
                "estimates; a longer history or more leads narrows them",
            )
        )
    model_auc = metrics.get("roc_auc")
    for name, baseline in baselines.items():
        auc = baseline.get("roc_auc")
        if auc is None:
            continue
        if auc < 0.5:
            hint = (
                "check the signs of the signals' points in the config"
                if name == "points"
                else "the features relate to conversion differently in the test rows than in training"
            )
            warnings.append(
                TrainingWarning(
                    kind=WarningKind.BASELINE_UPSIDE_DOWN,
                    title=f"{name} baseline upside down (ROC-AUC {auc:.3f})",
                    message=f"the {name} baseline's test ROC-AUC is {auc:.3f}, below 0.5: it ranks converting leads "
                    f"below the others; {hint}",
                )
            )
        if model_auc is not None and model_auc <= auc:
            warnings.append(
                TrainingWarning(
                    kind=WarningKind.NOT_BETTER_THAN_BASELINE,
                    title=f"no better than the {name} baseline",
                    message=f"the model's test ROC-AUC {model_auc:.3f} is not above the {name} baseline's {auc:.3f}: "
                    "serve the simpler score, or look for what the model misses",
                )
            )
    if importance:
        feature, share = max(importance.items(), key=lambda item: item[1])
        if share > DOMINANT_FEATURE_SHARE:
            warnings.append(
                TrainingWarning(
                    kind=WarningKind.DOMINANT_FEATURE,
                    title=f"`{feature}` has {share:.0%} of the gain",
                    message=f"`{feature}` takes {share:.0%} of the total split gain: make sure it is known before a "
                    "lead converts (not set because it did) and that the model should lean on it this much",
                )
            )
    if calibration is not None:
        chosen = calibration.candidates.get(calibration.method, {})
        lost = {
            f"{label} on validation (cross-fitted)": chosen.get(f"valid_{metric}_lost", 0.0)
            for metric, label in (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"))
        }
        for metric, label in (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC")):
            before, after = metrics.get(f"{metric}_uncalibrated"), metrics.get(metric)
            lost[f"{label} on test"] = before - after if before is not None and after is not None else 0.0
        if any(value > calibration.tolerance for value in lost.values()):
            figures = ", ".join(f"{value:.3f} of {where}" for where, value in lost.items() if value > 0)
            warnings.append(
                TrainingWarning(
                    kind=WarningKind.CALIBRATION_LOST_RANKING,
                    title=f"{calibration.method} calibration lost ranking",
                    message=f"the {calibration.method} calibration loses {figures}: it ties leads the booster tells "
                    "apart; use `calibration: sigmoid` (or auto) in the config's training section",
                )
            )
    return warnings


# --- the evaluation report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOutScores:
    """What the report needs about the test split: outcomes and each score on the same rows."""

    labels: np.ndarray
    served: np.ndarray  # calibrated model probability (what the service returns)
    uncalibrated: np.ndarray  # the booster's own probability
    points: np.ndarray  # classic points score
    points_probability: np.ndarray  # points mapped to a probability (isotonic on validation)
    logistic: np.ndarray  # the logistic-regression baseline's probability


def decile_table(labels: np.ndarray, scores: np.ndarray) -> list[dict[str, float]]:
    """Leads ranked by score in ten equal groups: conversions, rate, lift and cumulative capture per group."""
    order = np.argsort(-scores, kind="stable")
    groups = np.array_split(order, 10)
    base_rate = float(labels.mean()) or 1.0
    total = float(labels.sum()) or 1.0
    rows, captured = [], 0.0
    for decile, group in enumerate(groups, start=1):
        conversions = float(labels[group].sum())
        captured += conversions
        rate = conversions / len(group) if len(group) else 0.0
        rows.append(
            {
                "decile": float(decile),
                "leads": float(len(group)),
                "conversions": conversions,
                "rate": rate,
                "lift": rate / base_rate,
                "cumulative_capture": captured / total,
            }
        )
    return rows


def calibration_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """The ECE's equal-width probability bins: rows, positives, mean predicted and observed rate in each (NaN
    for the two rates of an empty bin)."""
    index = _bin_index(probabilities, bins)
    table = []
    for b in range(bins):
        in_bin = index == b
        rows = int(in_bin.sum())
        table.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "rows": float(rows),
                "positives": float(labels[in_bin].sum()),
                "mean_predicted": float(probabilities[in_bin].mean()) if rows else float("nan"),
                "observed_rate": float(labels[in_bin].mean()) if rows else float("nan"),
            }
        )
    return table


def write_report(
    out_dir: Path, metadata: ModelMetadata, scores: HeldOutScores, importance: Mapping[str, float]
) -> Path:
    """`report.md` and its PNG plots next to the model; returns the report's path."""
    plots = _write_plots(out_dir, scores, importance)
    lines = _report_lines(metadata, scores, importance, plots)
    path = out_dir / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


_METRIC_ROWS = (
    ("roc_auc", "ROC AUC", "ranking: chance a converter outranks a non-converter"),
    ("pr_auc", "PR AUC (average precision)", "ranking, focused on the converters"),
    ("top_decile_lift", "top-decile lift", "conversion rate of the top 10% / base rate"),
    ("top_decile_capture", "top-decile capture", "share of all conversions in the top 10%"),
    ("log_loss", "log loss", "probability quality (lower is better)"),
    ("brier", "Brier score", "mean squared error of the probability (lower is better)"),
    ("ece", "ECE (10 bins)", "expected calibration error (lower is better)"),
)
_SPLIT_NAMES = {"train": "train", "valid": "validation", "test": "test"}


def _with_interval(metrics: Mapping[str, float], key: str, suffix: str = "") -> str:
    value = metrics.get(f"{key}{suffix}")
    if value is None:
        return "n/a"
    low, high = metrics.get(f"{key}_ci_low{suffix}"), metrics.get(f"{key}_ci_high{suffix}")
    return f"{value:.4f} [{low:.3f}, {high:.3f}]" if low is not None and high is not None else f"{value:.4f}"


def _report_lines(
    metadata: ModelMetadata, scores: HeldOutScores, importance: Mapping[str, float], plots: Mapping[str, str]
) -> list[str]:
    rows, positives, data = metadata.rows, metadata.positives, metadata.training_data
    settings = metadata.training_settings
    metrics, baseline, logistic = metadata.metrics, metadata.baseline_metrics, metadata.logistic_baseline_metrics
    level = f"{CONFIDENCE_LEVEL:.0%}"
    lines = [
        f"# Model {metadata.version}",
        "",
        f"Predicts the probability that a lead has a `{metadata.conversion_type}` event within "
        f"{metadata.horizon_days:g} days. Trained {metadata.trained_at:%Y-%m-%d %H:%M} UTC with seed "
        f"{metadata.seed} on feature config `{metadata.config_hash}`.",
        "",
        "## Warnings",
        "",
    ]
    if metadata.warnings:
        lines += [f"- **{warning.title}**: {warning.message}." for warning in metadata.warnings]
    else:
        lines.append(
            f"None: every split has {SMALL_DATA_POSITIVES}+ positives, both baselines rank better than chance and "
            f"worse than the model, no feature has over {DOMINANT_FEATURE_SHARE:.0%} of the gain, and calibration "
            "kept the ranking."
        )
    lines += ["", "## Data", ""]
    lines += _data_lines(metadata, settings, data)
    lines += ["", "| split | snapshots | converting | rate |", "|---|---:|---:|---:|"]
    for split, name in _SPLIT_NAMES.items():
        count, converting = rows.get(split, 0), positives.get(split, 0)
        rate = f"{converting / count:.2%}" if count else "n/a"
        lines.append(f"| {name} | {count:,} | {converting:,} | {rate} |")
    lines += [
        "",
        "## Test metrics",
        "",
        f"Every score on the same test rows. In brackets: {level} bootstrap interval ({BOOTSTRAP_RESAMPLES} "
        "resamples of the test split's leads, a lead's snapshots together). *Model* is the served, calibrated "
        "probability; *uncalibrated* is the booster's own. The points baseline is the classic points score (each "
        "signal's points times its decayed value); its ranking metrics use the points as they are, its probability "
        "metrics an isotonic map of the points fitted on validation. The logistic regression is "
        f"{LOGISTIC_BASELINE}.",
        "",
        "| metric | model | uncalibrated | points baseline | logistic regression | what it measures |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, label, meaning in _METRIC_ROWS:
        values = [
            _with_interval(metrics, key),
            _with_interval(metrics, key, "_uncalibrated") if key != "base_rate" else "",
            _with_interval(baseline, key),
            _with_interval(logistic, key),
        ]
        lines.append(f"| {label} | {' | '.join(values)} | {meaning} |")
    lines += ["", f"Test base rate: {metrics.get('base_rate', 0.0):.2%} of snapshots convert within the horizon."]
    lines += _calibration_lines(metadata, scores)
    lines += ["", "## Ranked by score, in deciles (test split)", ""]
    lines += ["| decile | leads | conversions | rate | lift | cumulative capture | points capture | logistic capture |"]
    lines += ["|---:|---:|---:|---:|---:|---:|---:|---:|"]
    deciles = zip(
        decile_table(scores.labels, scores.served),
        decile_table(scores.labels, scores.points),
        decile_table(scores.labels, scores.logistic),
        strict=True,
    )
    for row, points, regression in deciles:
        lines.append(
            f"| {row['decile']:.0f} | {row['leads']:.0f} | {row['conversions']:.0f} | {row['rate']:.2%} | "
            f"{row['lift']:.2f} | {row['cumulative_capture']:.1%} | {points['cumulative_capture']:.1%} | "
            f"{regression['cumulative_capture']:.1%} |"
        )
    lines += ["", "## Most important features (share of total split gain)", ""]
    lines += ["| feature | gain share |", "|---|---:|"]
    for name, share in sorted(importance.items(), key=lambda item: -item[1])[:15]:
        lines.append(f"| `{name}` | {share:.1%} |")
    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({file})" for title, file in plots.items()]
    return lines


def _data_lines(
    metadata: ModelMetadata, settings: Mapping[str, str | int | float | None], data: Mapping[str, int]
) -> list[str]:
    window_start, window_end = settings.get("window_start"), settings.get("window_end")
    if window_start or window_end:
        window = f"from {window_start or 'the start of the history'} to before {window_end or 'its end'}"
    else:
        window = "anywhere in the history"
    exit_types = settings.get("exit_types")
    exits = (
        f" or exited (an event of type {exit_types}: {data.get('exited_leads', 0):,} leads did; one that exits within "
        "the horizon without converting first is a negative)"
        if exit_types
        else ""
    )
    if settings.get("split") == "lead":
        split = (
            "by lead (a hash of the lead id puts all of a lead's snapshots in one split); the splits cover the same "
            "period, so the test metrics say how the model does on leads it never saw, not on a later period"
        )
    else:
        split = (
            "by snapshot time (test is the latest period). There is no gap between splits, so the outcome windows "
            "of the last training rows reach into the validation period"
        )
    every = float(settings.get("snapshot_every_days") or 0)
    cap = settings.get("max_snapshots_per_lead")
    return [
        f"- History: {metadata.training_window_start:%Y-%m-%d} to {metadata.training_window_end:%Y-%m-%d}, "
        f"{data.get('events', 0):,} events from {data.get('leads', 0):,} leads "
        f"({data.get('invalid_lines', 0)} invalid lines skipped, {data.get('duplicate_events', 0)} "
        "redelivered events dropped).",
        f"- Point-in-time snapshots {window}: every {every:g} days from a random offset after a lead's first event, "
        f"at most {cap} per lead, none once a lead has converted{exits}. Features at a snapshot use only events at "
        "or before it; its label is a conversion within the horizon after it, and snapshots whose horizon runs past "
        "the end of the history are left out.",
        f"- Split {split}.",
        f"- Boosting rounds kept (early stopping on validation): {data.get('best_iteration', 0)}.",
    ]


def _calibration_lines(metadata: ModelMetadata, scores: HeldOutScores) -> list[str]:
    selection, metrics = metadata.calibration_selection, metadata.metrics
    lines = ["", "## Calibration", ""]
    if selection is not None:
        lines += [
            f"Served probabilities: **{selection.method}** (requested: {selection.requested}). `auto` takes, of "
            "sigmoid (Platt scaling: a logistic on the booster's logit, which keeps the ranking) and isotonic "
            "regression (which ties the scores on each of its steps), the one with the lower validation log loss "
            f"among those that lose at most {selection.tolerance:g} of the booster's validation ROC-AUC and PR-AUC, "
            "counting one standard error of the loss. The maps' figures are cross-fitted: each is scored on the "
            "validation leads it was not fitted to (5 folds); the loss is the mean over folds, ± its standard "
            "error. *none* is the booster's own probability.",
            "",
            "| calibration | validation ROC-AUC (lost) | validation PR-AUC (lost) | validation log loss |"
            " distinct scores on validation |",
            "|---|---:|---:|---:|---:|",
        ]
        for method, figures in selection.candidates.items():
            mark = " (chosen)" if method == selection.method else ""
            ranking = [
                f"{figures.get(f'valid_{metric}', float('nan')):.4f} ({figures.get(f'valid_{metric}_lost', 0.0):.4f}"
                f" ± {figures.get(f'valid_{metric}_lost_se', 0.0):.4f})"
                for metric in ("roc_auc", "pr_auc")
            ]
            lines.append(
                f"| {method}{mark} | {' | '.join(ranking)} | {figures.get('valid_log_loss', float('nan')):.4f} | "
                f"{figures.get('distinct_values', 0):,.0f} |"
            )
        lines.append("")
    if "roc_auc_uncalibrated" in metrics:
        lines.append(
            f"On test: ROC-AUC {metrics['roc_auc_uncalibrated']:.4f} uncalibrated and {metrics['roc_auc']:.4f} served, "
            f"PR-AUC {metrics['pr_auc_uncalibrated']:.4f} and {metrics['pr_auc']:.4f}, ECE "
            f"{metrics['ece_uncalibrated']:.4f} and {metrics['ece']:.4f}. The served probability in the ECE's 10 "
            "equal-width bins:"
        )
    lines += [
        "",
        "| probability | rows | converting | mean predicted | observed rate |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in calibration_bins(scores.labels, scores.served):
        rates = f"{row['mean_predicted']:.2%} | {row['observed_rate']:.2%}" if row["rows"] else "n/a | n/a"
        span = f"{row['low']:.1f} to {row['high']:.1f}"
        lines.append(f"| {span} | {row['rows']:,.0f} | {row['positives']:,.0f} | {rates} |")
    return lines


def _write_plots(out_dir: Path, scores: HeldOutScores, importance: Mapping[str, float]) -> dict[str, str]:
    # Figures on an Agg canvas directly: no pyplot, no global backend state, safe without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve, roc_curve

    labels = scores.labels
    written: dict[str, str] = {}
    ranked = (("model", scores.served), ("points baseline", scores.points), ("logistic regression", scores.logistic))

    def save(figure: Figure, title: str, file: str) -> None:
        FigureCanvasAgg(figure)
        figure.tight_layout()
        figure.savefig(out_dir / file, dpi=90, metadata={"Software": None})
        written[title] = file

    figure = Figure(figsize=(5, 4.5))
    axes = figure.add_subplot()
    for name, values in ranked:
        fpr, tpr, _ = roc_curve(labels, values)
        axes.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, values):.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    axes.legend(loc="lower right")
    save(figure, "ROC curve", "roc.png")

    figure = Figure(figsize=(5, 4.5))
    axes = figure.add_subplot()
    for name, values in ranked:
        precision, recall, _ = precision_recall_curve(labels, values)
        axes.plot(recall, precision, label=f"{name} (AP {average_precision_score(labels, values):.3f})")
    axes.axhline(float(labels.mean()), color="grey", linestyle=":", label="base rate")
    axes.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)")
    axes.legend(loc="upper right")
    save(figure, "Precision-recall curve", "pr.png")

    figure = Figure(figsize=(5, 4.5))
    axes = figure.add_subplot()
    for name, values in (("served (calibrated)", scores.served), ("booster (uncalibrated)", scores.uncalibrated)):
        table = [row for row in calibration_bins(labels, values) if row["rows"]]
        predicted = [row["mean_predicted"] for row in table]
        observed = [row["observed_rate"] for row in table]
        ece = expected_calibration_error(labels, values)
        axes.plot(predicted, observed, marker="o", label=f"{name}, ECE {ece:.3f}")
        if values is scores.served:  # how many rows each point stands for: a sparse bin's rate is noise
            for x, y, row in zip(predicted, observed, table, strict=True):
                axes.annotate(
                    f"n={row['rows']:,.0f}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7,
                    color="dimgray",
                )  # fmt: skip
    top = float(max(scores.served.max(), scores.uncalibrated.max(), 0.05))
    axes.plot([0, top], [0, top], color="grey", linestyle=":", label="perfect")
    axes.set(xlabel="mean predicted probability", ylabel="observed conversion rate", title="Calibration (test)")
    axes.legend(loc="upper left")
    save(figure, "Calibration curve", "calibration.png")

    figure = Figure(figsize=(5, 4.5))
    axes = figure.add_subplot()
    deciles = np.arange(0, 11) * 10
    for name, values in ranked:
        captured = [0.0] + [row["cumulative_capture"] * 100 for row in decile_table(labels, values)]
        axes.plot(deciles, captured, marker="o", label=name)
    axes.plot([0, 100], [0, 100], color="grey", linestyle=":", label="random")
    axes.set(
        xlabel="% of leads contacted (highest score first)",
        ylabel="% of conversions captured",
        title="Cumulative gains (test)",
    )
    axes.legend(loc="lower right")
    save(figure, "Cumulative gains by decile", "gains.png")

    figure = Figure(figsize=(6, 5.5))
    axes = figure.add_subplot()
    top_features = sorted(importance.items(), key=lambda item: item[1])[-20:]
    axes.barh([name for name, _ in top_features], [share * 100 for _, share in top_features])
    axes.set(xlabel="% of total split gain", title="Feature importance (gain)")
    save(figure, "Feature importance", "importance.png")

    figure = Figure(figsize=(5, 4.5))
    axes = figure.add_subplot()
    bins = np.linspace(0, float(max(scores.served.max(), 0.01)), 40).tolist()
    axes.hist(scores.served[labels == 0], bins=bins, alpha=0.6, density=True, label="did not convert")
    axes.hist(scores.served[labels == 1], bins=bins, alpha=0.6, density=True, label="converted")
    axes.set(xlabel="served probability", ylabel="density", title="Score distribution (test)", yscale="log")
    axes.legend(loc="upper right")
    save(figure, "Score distribution", "scores.png")
    return written
