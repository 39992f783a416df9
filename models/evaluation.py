"""How good a conversion score is: metrics against the classic points baseline, and the evaluation report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from models.spec import FeatureSpec
from models.vector import FeatureValue
from schemas.model import ModelMetadata

ECE_BINS = 10
TOP_FRACTION = 0.10
REPORT_FILE = "report.md"
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


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |observed rate - mean predicted| over equal-width probability bins, weighted by bin size."""
    if len(labels) == 0:
        return 0.0
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
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


# --- the evaluation report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOutScores:
    """What the report needs about the test split: outcomes and each score on the same rows."""

    labels: np.ndarray
    served: np.ndarray  # calibrated model probability (what the service returns)
    uncalibrated: np.ndarray  # the booster's own probability
    points: np.ndarray  # classic points score
    points_probability: np.ndarray  # points mapped to a probability (isotonic on validation)


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


def _report_lines(
    metadata: ModelMetadata, scores: HeldOutScores, importance: Mapping[str, float], plots: Mapping[str, str]
) -> list[str]:
    rows, data = metadata.rows, metadata.training_data
    metrics, baseline = metadata.metrics, metadata.baseline_metrics
    lines = [
        f"# Model {metadata.version}",
        "",
        f"Predicts the probability that a lead has a `{metadata.conversion_type}` event within "
        f"{metadata.horizon_days:g} days. Trained {metadata.trained_at:%Y-%m-%d %H:%M} UTC with seed "
        f"{metadata.seed} on feature config `{metadata.config_hash}`.",
        "",
        "## Data",
        "",
        f"- History: {metadata.training_window_start:%Y-%m-%d} to {metadata.training_window_end:%Y-%m-%d}, "
        f"{data.get('events', 0):,} events from {data.get('leads', 0):,} leads "
        f"({data.get('invalid_lines', 0)} invalid lines skipped, {data.get('duplicate_events', 0)} "
        "redelivered events dropped).",
        f"- Point-in-time snapshots: {rows.get('train', 0):,} train, {rows.get('valid', 0):,} validation, "
        f"{rows.get('test', 0):,} test, split by snapshot time (test is the latest period). Features at a "
        "snapshot use only events at or before it; leads that already converted are left out. There is no gap "
        "between splits, so the outcome windows of the last training rows reach into the validation period.",
        f"- Test base rate: {metrics.get('base_rate', 0.0):.2%} of snapshots convert within the horizon.",
        f"- Boosting rounds kept (early stopping on validation): {data.get('best_iteration', 0)}.",
        "",
        "## Test metrics",
        "",
        "The baseline is the classic points score (each signal's points times its decayed value) on the same "
        "rows. Its ranking metrics use the points as they are; its probability metrics map points to a "
        "probability with isotonic regression fitted on the validation split, like the model's calibration.",
        "",
        "| metric | model | points baseline | what it measures |",
        "|---|---:|---:|---|",
    ]
    for key, label, meaning in _METRIC_ROWS:
        model_value, baseline_value = metrics.get(key, float("nan")), baseline.get(key, float("nan"))
        lines.append(f"| {label} | {model_value:.4f} | {baseline_value:.4f} | {meaning} |")
    if "ece_uncalibrated" in metrics:
        lines += [
            "",
            f"Calibration moved the test ECE from {metrics['ece_uncalibrated']:.4f} (booster output) to "
            f"{metrics['ece']:.4f} (served score).",
        ]
    lines += ["", "## Ranked by score, in deciles (test split)", ""]
    lines += ["| decile | leads | conversions | rate | lift | cumulative capture | baseline capture |"]
    lines += ["|---:|---:|---:|---:|---:|---:|---:|"]
    baseline_deciles = decile_table(scores.labels, scores.points)
    for row, base in zip(decile_table(scores.labels, scores.served), baseline_deciles, strict=True):
        lines.append(
            f"| {row['decile']:.0f} | {row['leads']:.0f} | {row['conversions']:.0f} | {row['rate']:.2%} | "
            f"{row['lift']:.2f} | {row['cumulative_capture']:.1%} | {base['cumulative_capture']:.1%} |"
        )
    lines += ["", "## Most important features (share of total split gain)", ""]
    lines += ["| feature | gain share |", "|---|---:|"]
    for name, share in sorted(importance.items(), key=lambda item: -item[1])[:15]:
        lines.append(f"| `{name}` | {share:.1%} |")
    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({file})" for title, file in plots.items()]
    return lines


def _write_plots(out_dir: Path, scores: HeldOutScores, importance: Mapping[str, float]) -> dict[str, str]:
    # Figures on an Agg canvas directly: no pyplot, no global backend state, safe without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve, roc_curve

    labels = scores.labels
    written: dict[str, str] = {}

    def save(figure: Figure, title: str, file: str) -> None:
        FigureCanvasAgg(figure)
        figure.tight_layout()
        figure.savefig(out_dir / file, dpi=90, metadata={"Software": None})
        written[title] = file

    figure = Figure(figsize=(5, 4.5))
    axes = figure.add_subplot()
    for name, values in (("model", scores.served), ("points baseline", scores.points)):
        fpr, tpr, _ = roc_curve(labels, values)
        axes.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, values):.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    axes.legend(loc="lower right")
    save(figure, "ROC curve", "roc.png")

    figure = Figure(figsize=(5, 4.5))
    axes = figure.add_subplot()
    for name, values in (("model", scores.served), ("points baseline", scores.points)):
        precision, recall, _ = precision_recall_curve(labels, values)
        axes.plot(recall, precision, label=f"{name} (AP {average_precision_score(labels, values):.3f})")
    axes.axhline(float(labels.mean()), color="grey", linestyle=":", label="base rate")
    axes.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)")
    axes.legend(loc="upper right")
    save(figure, "Precision-recall curve", "pr.png")

    figure = Figure(figsize=(5, 4.5))
    axes = figure.add_subplot()
    for name, values in (("served (calibrated)", scores.served), ("booster (uncalibrated)", scores.uncalibrated)):
        predicted, observed = _reliability(labels, values)
        ece = expected_calibration_error(labels, values)
        axes.plot(predicted, observed, marker="o", label=f"{name}, ECE {ece:.3f}")
    top = float(max(scores.served.max(), scores.uncalibrated.max(), 0.05))
    axes.plot([0, top], [0, top], color="grey", linestyle=":", label="perfect")
    axes.set(xlabel="mean predicted probability", ylabel="observed conversion rate", title="Calibration (test)")
    axes.legend(loc="upper left")
    save(figure, "Calibration curve", "calibration.png")

    figure = Figure(figsize=(5, 4.5))
    axes = figure.add_subplot()
    deciles = np.arange(0, 11) * 10
    for name, values in (("model", scores.served), ("points baseline", scores.points)):
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


def _reliability(labels: np.ndarray, probabilities: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean predicted vs observed rate in the non-empty ECE bins."""
    index = np.minimum((probabilities * ECE_BINS).astype(int), ECE_BINS - 1)
    predicted, observed = [], []
    for b in range(ECE_BINS):
        in_bin = index == b
        if in_bin.any():
            predicted.append(float(probabilities[in_bin].mean()))
            observed.append(float(labels[in_bin].mean()))
    return predicted, observed
