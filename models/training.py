"""Training a conversion model from event history with point-in-time snapshots replayed through the serving fold.

Steps: read the history (JSON lines, optionally gzip) into compact per-lead arrays; replay each lead in event
time through `fold` / `feature_values` and take snapshots at sampled instants t (features see only events at
or before t, the label is a conversion in (t, t + horizon]); split the rows by snapshot time into train,
validation and test; fit LightGBM, calibrate it with isotonic regression on validation, measure it and the
points baseline on test; write `model.txt` + `metadata.json` and check the artifact loads as the service would.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import tempfile
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

import lightgbm as lgb
import numpy as np
from pydantic import ValidationError
from sklearn.isotonic import IsotonicRegression
from tqdm import tqdm

from models.evaluation import (
    HeldOutScores,
    points_score,
    probability_metrics,
    ranking_metrics,
    score_metrics,
    write_report,
)
from models.scoring import METADATA_FILE, MODEL_FILE, Scorer
from models.spec import FeatureSpec
from models.state import DAY_MS, LeadState, fold
from models.vector import FeatureLayout, FeatureValue, feature_names, feature_values
from schemas.events import Event
from schemas.model import Calibration, ModelMetadata

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TrainingOptions:
    horizon_days: float = 30.0
    snapshot_every_days: float = 7.0  # candidate snapshot spacing per lead
    max_snapshots_per_lead: int = 6  # sampling cap so long-lived leads don't dominate
    seed: int = 7
    version: str | None = None  # default: f"m{UTC timestamp}-{config_hash[:6]}"
    # Split by snapshot time, not at random: the model is judged on a later period than it learnt from.
    valid_fraction: float = 0.15
    test_fraction: float = 0.15
    num_boost_round: int = 300  # with num_leaves, bounds the model file (~3 KB a tree)
    early_stopping_rounds: int = 30
    learning_rate: float = 0.06
    num_leaves: int = 15  # 31 gained ~0.01 ROC-AUC on simulator data but made reason codes 3.6x slower
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.9
    lambda_l2: float = 10.0
    # Profile categoricals overfit easily (a rare country looks predictive): smooth them, require big groups.
    cat_smooth: float = 50.0
    min_data_per_group: int = 200
    num_threads: int = 1  # fixed, so a seed reproduces the same trees on any machine
    max_categories: int = 100  # per profile attribute; rarer values are encoded as missing
    min_category_count: int = 5
    report: bool = True  # report.md and PNG plots next to the model (needs matplotlib)

    def __post_init__(self) -> None:
        if self.horizon_days <= 0 or self.snapshot_every_days <= 0:
            raise ValueError("horizon_days and snapshot_every_days must be positive")
        if self.max_snapshots_per_lead < 1:
            raise ValueError("max_snapshots_per_lead must be at least 1")
        if min(self.valid_fraction, self.test_fraction) <= 0 or self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction and test_fraction must be positive and leave rows to train on")

    @property
    def horizon_ms(self) -> int:
        return int(self.horizon_days * DAY_MS)

    @property
    def snapshot_every_ms(self) -> int:
        return max(int(self.snapshot_every_days * DAY_MS), 1)


# --- reading the history -------------------------------------------------------------------------------------


@dataclass(slots=True)
class LeadHistory:
    """One lead's events as parallel arrays (about 20 bytes an event instead of a pydantic object)."""

    ts: array[int] = field(default_factory=lambda: array("q"))
    kinds: array[int] = field(default_factory=lambda: array("I"))  # index into EventHistory.kinds
    ids: array[int] = field(default_factory=lambda: array("q"))  # hash of event_id, to drop redeliveries


@dataclass(slots=True)
class EventHistory:
    """Every lead's events, with each distinct (type, fold-relevant properties) pair stored once."""

    leads: dict[str, LeadHistory] = field(default_factory=dict)
    kinds: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: int = 0
    invalid_lines: int = 0
    start_ms: int = 0
    end_ms: int = 0
    _kind_index: dict[object, int] = field(default_factory=dict)

    def add(self, event: Event, spec: FeatureSpec) -> None:
        properties = _fold_properties(event, spec)
        key = _kind_key(event.type, properties)
        kind = self._kind_index.get(key) if key is not None else None
        if kind is None:
            kind = len(self.kinds)
            self.kinds.append((event.type, properties))
            if key is not None:
                self._kind_index[key] = kind
        lead = self.leads.get(event.lead_id)
        if lead is None:
            lead = self.leads[event.lead_id] = LeadHistory()
        lead.ts.append(event.ts)
        lead.kinds.append(kind)
        lead.ids.append(hash(event.event_id))
        self.start_ms = min(self.start_ms, event.ts) if self.events else event.ts
        self.end_ms = max(self.end_ms, event.ts)
        self.events += 1

    def lead_events(self, lead_id: str) -> tuple[list[Event], int]:
        """The lead's events in event-time order (file order among equal times), and how many were dropped
        as repeats of an event_id already seen (a redelivered event is applied once)."""
        lead = self.leads[lead_id]
        seen: set[int] = set()
        unique: list[int] = []
        for i, event_hash in enumerate(lead.ids):
            if event_hash not in seen:
                seen.add(event_hash)
                unique.append(i)
        unique.sort(key=lead.ts.__getitem__)  # stable: ties keep file order
        events = []
        for i in unique:
            event_type, properties = self.kinds[lead.kinds[i]]
            # Validated when read; the fold never reads event_id, so it is not kept.
            events.append(
                Event.model_construct(
                    event_id="-", lead_id=lead_id, type=event_type, ts=lead.ts[i], properties=properties
                )
            )
        return events, len(lead.ids) - len(unique)


def _fold_properties(event: Event, spec: FeatureSpec) -> dict[str, Any]:
    """The properties the fold can read: all of a profile update's, else only the keys a signal filters on.

    Dropping the rest (campaign names, URLs, ...) is what keeps a few million events in memory.
    """
    if event.type == spec.profile_type:
        return event.properties
    keys = {key for signal in spec.signals_by_type.get(event.type, ()) for key in signal.where}
    return {key: value for key, value in event.properties.items() if key in keys}


def _kind_key(event_type: str, properties: dict[str, Any]) -> object | None:
    # The value's type is part of the key: True and 1 compare equal but str() differently in Signal.matches.
    try:
        key = (event_type, frozenset((k, type(v), v) for k, v in properties.items()))
        hash(key)
    except TypeError:  # a list or dict value (profile updates): stored once per event, not shared
        return None
    return key


def _open_lines(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return cast(BinaryIO, gzip.GzipFile(path, "rb"))
    return path.open("rb")


def read_history(path: Path, spec: FeatureSpec, progress: bool = False) -> EventHistory:
    """Parse a JSON-lines event history (gzip if `.gz`); invalid lines are skipped and counted."""
    history = EventHistory()
    with _open_lines(path) as lines:
        for line in tqdm(lines, desc="reading events", unit=" lines", unit_scale=True, disable=not progress):
            if not line.strip():
                continue
            try:
                event = Event.model_validate_json(line)
            except ValidationError:
                history.invalid_lines += 1
                continue
            history.add(event, spec)
    if history.invalid_lines:
        log.warning("skipped %d invalid lines in %s", history.invalid_lines, path)
    return history


# --- point-in-time snapshots ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A lead as the service would have seen it at `at_ms`, and whether it converted within the horizon."""

    lead_id: str
    at_ms: int
    label: int
    values: dict[str, FeatureValue]


def snapshot_times(
    first_event_ms: int, last_allowed_ms: int, options: TrainingOptions, rng: random.Random
) -> list[int]:
    """A random offset after the first event, then every `snapshot_every_days`, capped by sampling."""
    every = options.snapshot_every_ms
    start = first_event_ms + int(rng.random() * every)
    times = list(range(start, last_allowed_ms + 1, every))
    if len(times) > options.max_snapshots_per_lead:
        times = sorted(rng.sample(times, options.max_snapshots_per_lead))
    return times


def lead_snapshots(
    lead_id: str, events: Sequence[Event], history_end_ms: int, spec: FeatureSpec, options: TrainingOptions
) -> list[Snapshot]:
    """Point-in-time snapshots of one lead at sampled times; `events` must be in event-time order."""
    if not events:
        return []
    last_allowed = history_end_ms - options.horizon_ms
    first_conversion = next((e.ts for e in events if e.type == spec.conversion_type), None)
    if first_conversion is not None:
        last_allowed = min(last_allowed, first_conversion - 1)
    # Seeded per lead (str seeds hash with SHA-512), so a lead's snapshots do not depend on the others.
    rng = random.Random(f"{options.seed}/{lead_id}")
    times = snapshot_times(events[0].ts, last_allowed, options, rng)
    return snapshots_at(lead_id, events, times, history_end_ms, spec, options.horizon_ms)


def snapshots_at(
    lead_id: str,
    events: Sequence[Event],
    times: Sequence[int],
    history_end_ms: int,
    spec: FeatureSpec,
    horizon_ms: int,
) -> list[Snapshot]:
    """Snapshots of one lead at ascending `times`; `events` must be in event-time order.

    Features at t come from the events at or before t only; the label is a conversion in (t, t + horizon].
    A time is skipped when the lead has no event yet, has already converted (a conversion at or before t),
    or when its label is unknown (t + horizon past the end of the history).
    """
    conversions = [e.ts for e in events if e.type == spec.conversion_type]
    snapshots = []
    state = LeadState()
    applied = 0
    for at_ms in times:
        if at_ms + horizon_ms > history_end_ms or any(ts <= at_ms for ts in conversions):
            continue
        upto = applied
        while upto < len(events) and events[upto].ts <= at_ms:
            upto += 1
        # Same fold as serving, in event-time order: the state holds exactly the events at or before t.
        state = fold(state, events[applied:upto], spec)
        applied = upto
        if applied == 0:
            continue
        label = int(any(at_ms < ts <= at_ms + horizon_ms for ts in conversions))
        snapshots.append(Snapshot(lead_id, at_ms, label, feature_values(state, at_ms, spec)))
    return snapshots


@dataclass(slots=True)
class SnapshotTable:
    lead_ids: list[str]
    at_ms: np.ndarray
    labels: np.ndarray
    values: list[dict[str, FeatureValue]]

    def __len__(self) -> int:
        return len(self.lead_ids)


def build_snapshots(
    history: EventHistory, spec: FeatureSpec, options: TrainingOptions, progress: bool = False
) -> tuple[SnapshotTable, int]:
    """Snapshots of every lead (in lead_id order, so the file's order does not matter), and duplicates dropped."""
    snapshots: list[Snapshot] = []
    duplicates = 0
    lead_ids = sorted(history.leads)
    for lead_id in tqdm(lead_ids, desc="replaying leads", unit=" leads", disable=not progress):
        events, dropped = history.lead_events(lead_id)
        duplicates += dropped
        snapshots.extend(lead_snapshots(lead_id, events, history.end_ms, spec, options))
    table = SnapshotTable(
        lead_ids=[s.lead_id for s in snapshots],
        at_ms=np.array([s.at_ms for s in snapshots], dtype=np.int64),
        labels=np.array([s.label for s in snapshots], dtype=np.int8),
        values=[s.values for s in snapshots],
    )
    return table, duplicates


def split_by_time(at_ms: np.ndarray, valid_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Row indices per split: the earliest snapshots train, the next validate, the latest test."""
    order = np.argsort(at_ms, kind="stable")
    n = len(order)
    n_test = round(n * test_fraction)
    n_valid = round(n * valid_fraction)
    n_train = n - n_valid - n_test
    return {
        "train": np.sort(order[:n_train]),
        "valid": np.sort(order[n_train : n_train + n_valid]),
        "test": np.sort(order[n_train + n_valid :]),
    }


def category_vocabularies(
    rows: Sequence[Mapping[str, FeatureValue]], attributes: Sequence[str], options: TrainingOptions
) -> dict[str, list[str]]:
    """Per profile attribute, its values seen in training, most frequent first (ties by name)."""
    vocabularies: dict[str, list[str]] = {}
    for attribute in attributes:
        counts: dict[str, int] = {}
        for row in rows:
            value = row.get(attribute)
            if value is not None:
                counts[str(value)] = counts.get(str(value), 0) + 1
        common = sorted(
            (v for v, c in counts.items() if c >= options.min_category_count), key=lambda v: (-counts[v], v)
        )
        vocabularies[attribute] = common[: options.max_categories]
    return vocabularies


# --- fitting -------------------------------------------------------------------------------------------------


def booster_params(options: TrainingOptions) -> dict[str, Any]:
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": options.learning_rate,
        "num_leaves": options.num_leaves,
        "min_data_in_leaf": options.min_data_in_leaf,
        "feature_fraction": options.feature_fraction,
        "lambda_l2": options.lambda_l2,
        "cat_smooth": options.cat_smooth,
        "min_data_per_group": options.min_data_per_group,
        "cat_l2": 20.0,
        "max_cat_threshold": 16,
        "seed": options.seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": options.num_threads,
        "verbosity": -1,
    }


def fit_booster(
    matrices: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    layout: FeatureLayout,
    options: TrainingOptions,
) -> lgb.Booster:
    """A LightGBM binary classifier, early-stopped on the validation split's log loss."""
    params = booster_params(options)
    train = lgb.Dataset(
        matrices["train"],
        labels["train"],
        feature_name=list(layout.names),
        categorical_feature=layout.categorical_names,
        params={"verbosity": -1},
        free_raw_data=False,
    )
    valid = lgb.Dataset(matrices["valid"], labels["valid"], reference=train)
    return lgb.train(
        params,
        train,
        num_boost_round=options.num_boost_round,
        valid_sets=[valid],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(options.early_stopping_rounds, verbose=False)],
    )


def fit_isotonic(raw: np.ndarray, labels: np.ndarray) -> IsotonicRegression:
    """Isotonic regression of outcomes on scores, kept off 0 and 1.

    An end block with no positives (or no negatives) would otherwise promise 0% (or 100%): one surprise
    costs a log loss of ~35 and reads as certainty to a user. Half an observation in n is the floor.
    """
    floor = 0.5 / (len(labels) + 1)
    return IsotonicRegression(y_min=floor, y_max=1.0 - floor, out_of_bounds="clip").fit(raw, labels)


def calibration_from_isotonic(isotonic: IsotonicRegression) -> Calibration:
    """The isotonic map as knots for np.interp (which clamps outside them, like out_of_bounds="clip")."""
    raw = [float(x) for x in isotonic.X_thresholds_]
    calibrated = [float(y) for y in isotonic.y_thresholds_]
    if len(raw) == 1:  # a constant map has one knot; np.interp is happy with two equal values
        raw, calibrated = [0.0, 1.0], [calibrated[0], calibrated[0]]
    return Calibration(raw=raw, calibrated=calibrated)


def apply_calibration(calibration: Calibration, raw: np.ndarray) -> np.ndarray:
    """Exactly what Scorer.predict does with a model's calibration."""
    calibrated: np.ndarray = np.interp(raw, np.asarray(calibration.raw), np.asarray(calibration.calibrated))
    return calibrated


# --- the whole run -------------------------------------------------------------------------------------------


def train_model(
    events_path: Path, spec: FeatureSpec, out_dir: Path, options: TrainingOptions, progress: bool = True
) -> ModelMetadata:
    """Train, calibrate and evaluate a model on an event history; write it to `out_dir` and return its metadata."""
    history = read_history(events_path, spec, progress)
    if not history.leads:
        raise ValueError(f"{events_path} has no valid events ({history.invalid_lines} invalid lines)")
    table, duplicates = build_snapshots(history, spec, options, progress)
    _require_rows(table, history, options)

    names = feature_names(spec)
    splits = split_by_time(table.at_ms, options.valid_fraction, options.test_fraction)
    labels = {name: table.labels[index].astype(np.float64) for name, index in splits.items()}
    for name in SPLITS:
        _require_both_classes(name, labels[name])
    categories = category_vocabularies([table.values[i] for i in splits["train"]], spec.profile_attributes, options)
    layout = FeatureLayout(tuple(names), categories)
    matrices = {name: layout.encode([table.values[i] for i in index]) for name, index in splits.items()}

    booster = fit_booster(matrices, labels, layout, options)
    best_iteration = booster.best_iteration or options.num_boost_round
    raw = {
        name: np.asarray(booster.predict(matrix, num_iteration=best_iteration, num_threads=options.num_threads))
        for name, matrix in matrices.items()
    }
    # Calibrated on validation, not train: the booster's train probabilities are overconfident.
    isotonic = fit_isotonic(raw["valid"], labels["valid"])
    calibration = calibration_from_isotonic(isotonic)
    served_test = apply_calibration(calibration, raw["test"])

    metrics = score_metrics(labels["test"], served_test, served_test)
    metrics["ece_uncalibrated"] = probability_metrics(labels["test"], raw["test"])["ece"]
    metrics["roc_auc_uncalibrated"] = ranking_metrics(labels["test"], raw["test"])["roc_auc"]
    points = {name: np.array([points_score(table.values[i], spec) for i in index]) for name, index in splits.items()}
    # Points are not probabilities: for log loss and ECE they get the same kind of isotonic map on validation.
    points_probability = np.asarray(fit_isotonic(points["valid"], labels["valid"]).predict(points["test"]))
    baseline_metrics = score_metrics(labels["test"], points["test"], points_probability)

    trained_at = datetime.now(UTC)
    metadata = ModelMetadata(
        version=options.version or f"m{trained_at:%Y%m%dT%H%M%SZ}-{spec.config_hash[:6]}",
        feature_names=names,
        categories=categories,
        config_hash=spec.config_hash,
        conversion_type=spec.conversion_type,
        horizon_days=options.horizon_days,
        trained_at=trained_at,
        training_window_start=_utc(history.start_ms),
        training_window_end=_utc(history.end_ms),
        seed=options.seed,
        rows={name: len(index) for name, index in splits.items()},
        metrics=metrics,
        baseline_metrics=baseline_metrics,
        calibration=calibration,
        training_data={
            "events": history.events,
            "leads": len(history.leads),
            "invalid_lines": history.invalid_lines,
            "duplicate_events": duplicates,
            "positives_train": int(labels["train"].sum()),
            "best_iteration": best_iteration,
        },
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(out_dir / MODEL_FILE, booster.model_to_string(num_iteration=best_iteration))
    _write_atomically(out_dir / METADATA_FILE, metadata.model_dump_json(indent=2))
    _verify_artifact(out_dir, spec, matrices["test"], served_test, isotonic.predict(raw["test"]))
    if options.report:
        test_scores = HeldOutScores(labels["test"], served_test, raw["test"], points["test"], points_probability)
        gains = booster.feature_importance(importance_type="gain", iteration=best_iteration)
        total_gain = max(float(gains.sum()), 1e-12)
        importance = {name: float(gain) / total_gain for name, gain in zip(names, gains, strict=True)}
        write_report(out_dir, metadata, test_scores, importance)
    return metadata


def _verify_artifact(
    out_dir: Path, spec: FeatureSpec, test_matrix: np.ndarray, expected: np.ndarray, isotonic: np.ndarray
) -> None:
    """Load the artifact as the service does; its predictions must be the ones just measured."""
    scorer = Scorer.load(out_dir)
    scorer.check_compatible(spec)
    served = scorer.predict(test_matrix)
    if not (np.allclose(served, expected, rtol=0, atol=1e-9) and np.allclose(served, isotonic, rtol=0, atol=1e-9)):
        worst = float(np.max(np.abs(served - isotonic)))
        raise RuntimeError(f"the written model at {out_dir} does not reproduce its calibrated scores (off by {worst})")


def _require_rows(table: SnapshotTable, history: EventHistory, options: TrainingOptions) -> None:
    days = (history.end_ms - history.start_ms) / DAY_MS
    if len(table) < 100:
        raise ValueError(
            f"only {len(table)} snapshots from {len(history.leads)} leads over {days:.1f} days of history "
            f"with a {options.horizon_days:g}-day horizon; use a longer history, more leads, or a shorter horizon"
        )


def _require_both_classes(split: str, labels: np.ndarray) -> None:
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        raise ValueError(
            f"the {split} split's {len(labels)} snapshots are all {'positive' if positives else 'negative'}; "
            "a model needs both converting and non-converting leads in every split (use more history)"
        )


def _utc(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


def _write_atomically(path: Path, text: str) -> None:
    # A reader (or a crash) never sees half a file: write beside it, then rename over it.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the service may run as another user
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
