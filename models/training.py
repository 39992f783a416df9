"""Training a conversion model from event history with point-in-time snapshots replayed through the serving fold.

Steps: read the history (JSON lines, optionally gzip) into compact per-lead arrays; replay each lead in event
time through `fold` / `FeatureBatch` and take snapshots at sampled instants t inside the training window
(features see only events at or before t, the label is a conversion in (t, t + horizon]; no snapshot once a
lead has converted or exited); split the rows by snapshot time or by lead into train, validation and test,
refusing splits with too few positives; fit LightGBM, calibrate it on validation without losing its ranking,
measure it, the points baseline and a logistic regression on test with bootstrap intervals; write `model.txt`
+ `metadata.json` (+ `report.md`) and check the artifact loads as the service would.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import random
import tempfile
from array import array
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

import lightgbm as lgb
import numpy as np
from pydantic import ValidationError
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from models.evaluation import (
    HeldOutScores,
    bootstrap_intervals,
    fit_logistic_baseline,
    points_score,
    score_metrics,
    training_warnings,
    write_report,
)
from models.scoring import METADATA_FILE, MODEL_FILE, Scorer
from models.spec import FeatureSpec
from models.state import DAY_MS, LeadState, fold
from models.training_spec import CalibrationPolicy, SplitMethod, TrainingSpec
from models.vector import OTHER_CATEGORY, FeatureBatch, FeatureLayout, FeatureValue, feature_names
from schemas.events import Event
from schemas.model import Calibration, CalibrationMethod, CalibrationSelection, ModelMetadata

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


_DEFAULTS = TrainingSpec()  # the config section's defaults are the options' defaults


@dataclass(frozen=True)
class TrainingOptions:
    """Everything a training run uses: the config's `training:` section (models.training_spec), command-line
    overrides, and the booster's settings."""

    horizon_days: float = _DEFAULTS.horizon_days
    snapshot_every_days: float = _DEFAULTS.snapshot_every_days  # candidate snapshot spacing per lead
    max_snapshots_per_lead: int = _DEFAULTS.max_snapshots_per_lead  # sampling cap so long-lived leads don't dominate
    window_start_ms: int | None = None  # no snapshot before this time
    window_end_ms: int | None = None  # no snapshot at or after this time
    # By default split by snapshot time, not at random: the model is judged on a later period than it learnt from.
    split: SplitMethod = _DEFAULTS.split
    valid_fraction: float = _DEFAULTS.valid_fraction
    test_fraction: float = _DEFAULTS.test_fraction
    min_positives: int = _DEFAULTS.min_positives  # per split: fewer and training refuses to run
    calibration: CalibrationPolicy = _DEFAULTS.calibration
    seed: int = 7
    version: str | None = None  # default: f"m{UTC timestamp}-{config_hash[:6]}"
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
    max_categories: int = 100  # per profile attribute; rarer values share the "other" bucket
    min_category_count: int = 5
    report: bool = True  # report.md and PNG plots next to the model (needs matplotlib)

    def __post_init__(self) -> None:
        # Command-line values arrive as strings.
        object.__setattr__(self, "split", SplitMethod(self.split))
        object.__setattr__(self, "calibration", CalibrationPolicy(self.calibration))
        if self.horizon_days <= 0 or self.snapshot_every_days <= 0:
            raise ValueError("horizon_days and snapshot_every_days must be positive")
        if self.max_snapshots_per_lead < 1:
            raise ValueError("max_snapshots_per_lead must be at least 1")
        if min(self.valid_fraction, self.test_fraction) <= 0 or self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction and test_fraction must be positive and leave rows to train on")
        if self.min_positives < 1:
            raise ValueError("min_positives must be at least 1")
        start, end = self.window_start_ms, self.window_end_ms
        if start is not None and end is not None and end <= start:
            raise ValueError(
                f"the training window ends ({_utc(end):%Y-%m-%d %H:%M}) before it starts ({_utc(start):%Y-%m-%d %H:%M})"
            )

    @classmethod
    def from_spec(cls, spec: TrainingSpec, **overrides: Any) -> TrainingOptions:
        """The options of a config's `training:` section, with `overrides` (e.g. command-line flags) on top."""
        configured: dict[str, Any] = {
            "horizon_days": spec.horizon_days,
            "snapshot_every_days": spec.snapshot_every_days,
            "max_snapshots_per_lead": spec.max_snapshots_per_lead,
            "window_start_ms": _epoch_ms(spec.window_start),
            "window_end_ms": _epoch_ms(spec.window_end),
            "split": spec.split,
            "valid_fraction": spec.valid_fraction,
            "test_fraction": spec.test_fraction,
            "min_positives": spec.min_positives,
            "calibration": spec.calibration,
        }
        return cls(**{**configured, **overrides})

    @property
    def horizon_ms(self) -> int:
        return int(self.horizon_days * DAY_MS)

    @property
    def snapshot_every_ms(self) -> int:
        return max(int(self.snapshot_every_days * DAY_MS), 1)

    def in_window(self, at_ms: int) -> bool:
        return (self.window_start_ms is None or at_ms >= self.window_start_ms) and (
            self.window_end_ms is None or at_ms < self.window_end_ms
        )

    @property
    def settings(self) -> dict[str, str | int | float | None]:
        """How the snapshots were taken, split and calibrated, as the metadata records it."""
        window = {"window_start": self.window_start_ms, "window_end": self.window_end_ms}
        recorded: dict[str, str | int | float | None] = {
            key: _utc(ms).isoformat() if ms is not None else None for key, ms in window.items()
        }
        for key in (
            "horizon_days",
            "snapshot_every_days",
            "max_snapshots_per_lead",
            "split",
            "valid_fraction",
            "test_fraction",
            "min_positives",
            "calibration",
        ):
            value = getattr(self, key)
            recorded[key] = value.value if isinstance(value, SplitMethod | CalibrationPolicy) else value
        return recorded


def _epoch_ms(instant: datetime | None) -> int | None:
    return None if instant is None else int(instant.timestamp() * 1000)


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
    """The properties the fold can read: all of a profile update's, else the ones its signals filter on or
    take a value from (`FeatureSpec.property_keys_by_type`).

    Dropping the rest (campaign names, URLs, ...) is what keeps a few million events in memory.
    """
    if event.type == spec.profile_type:
        return event.properties
    keys = spec.property_keys_by_type.get(event.type)
    if not keys:
        return {}
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
    """A random offset after the first event, then every `snapshot_every_days` inside the training window,
    capped by sampling."""
    every = options.snapshot_every_ms
    start = first_event_ms + int(rng.random() * every)
    times = [t for t in range(start, last_allowed_ms + 1, every) if options.in_window(t)]
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
    # Sampled only while the lead can still convert: before its first conversion and before its first exit.
    for end in (_first_of(events, {spec.conversion_type}), _first_of(events, spec.exit_types)):
        if end is not None:
            last_allowed = min(last_allowed, end - 1)
    # Seeded per lead (str seeds hash with SHA-512), so a lead's snapshots do not depend on the others.
    rng = random.Random(f"{options.seed}/{lead_id}")
    times = snapshot_times(events[0].ts, last_allowed, options, rng)
    return snapshots_at(lead_id, events, times, history_end_ms, spec, options.horizon_ms)


def _first_of(events: Sequence[Event], types: Container[str]) -> int | None:
    return next((e.ts for e in events if e.type in types), None)


def snapshots_at(
    lead_id: str,
    events: Sequence[Event],
    times: Sequence[int],
    history_end_ms: int,
    spec: FeatureSpec,
    horizon_ms: int,
) -> list[Snapshot]:
    """Snapshots of one lead at ascending `times`; `events` must be in event-time order.

    Features at t come from the events at or before t only; the label is a conversion in (t, t + horizon]
    that comes no later than the lead's first exit event (after an exit a lead cannot convert: one that exits
    within the horizon without converting first is a negative). A time is skipped when the lead has no event
    yet, has already converted or exited (a conversion or exit at or before t), or when its label is unknown
    (t + horizon past the end of the history).
    """
    conversions = [e.ts for e in events if e.type == spec.conversion_type]
    exited = _first_of(events, spec.exit_types)
    if exited is not None:
        conversions = [ts for ts in conversions if ts <= exited]
    taken: list[tuple[int, int, LeadState]] = []  # (time, label, state as of then)
    state = LeadState()
    applied = 0
    for at_ms in times:
        if at_ms + horizon_ms > history_end_ms or any(ts <= at_ms for ts in conversions):
            continue
        if exited is not None and exited <= at_ms:
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
        taken.append((at_ms, label, state))  # fold copies: this state stays as of at_ms
    if not taken:
        return []
    features = FeatureBatch.of([s for _, _, s in taken], [t for t, _, _ in taken], spec)
    return [Snapshot(lead_id, at_ms, label, features.values(i)) for i, (at_ms, label, _) in enumerate(taken)]


@dataclass(slots=True)
class SnapshotTable:
    lead_ids: list[str]
    at_ms: np.ndarray
    labels: np.ndarray
    values: list[dict[str, FeatureValue]]

    def __len__(self) -> int:
        return len(self.lead_ids)

    @property
    def lead_codes(self) -> np.ndarray:
        """One integer per row naming its lead (rows of a lead are resampled together in the bootstrap)."""
        _, codes = np.unique(np.asarray(self.lead_ids, dtype=object), return_inverse=True)
        return np.asarray(codes, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class ReplayCounts:
    """What replaying the history found besides the snapshots."""

    duplicate_events: int
    exited_leads: int  # leads with an exit event (sampled only before it)


def build_snapshots(
    history: EventHistory, spec: FeatureSpec, options: TrainingOptions, progress: bool = False
) -> tuple[SnapshotTable, ReplayCounts]:
    """Snapshots of every lead (in lead_id order, so the file's order does not matter), and what was dropped."""
    snapshots: list[Snapshot] = []
    duplicates = exited = 0
    lead_ids = sorted(history.leads)
    for lead_id in tqdm(lead_ids, desc="replaying leads", unit=" leads", disable=not progress):
        events, dropped = history.lead_events(lead_id)
        duplicates += dropped
        exited += any(e.type in spec.exit_types for e in events)
        snapshots.extend(lead_snapshots(lead_id, events, history.end_ms, spec, options))
    table = SnapshotTable(
        lead_ids=[s.lead_id for s in snapshots],
        at_ms=np.array([s.at_ms for s in snapshots], dtype=np.int64),
        labels=np.array([s.label for s in snapshots], dtype=np.int8),
        values=[s.values for s in snapshots],
    )
    return table, ReplayCounts(duplicates, exited)


def split_rows(table: SnapshotTable, options: TrainingOptions) -> dict[str, np.ndarray]:
    """Row indices per split, by the options' split method."""
    if options.split is SplitMethod.LEAD:
        return split_by_lead(table.lead_ids, options.valid_fraction, options.test_fraction)
    return split_by_time(table.at_ms, options.valid_fraction, options.test_fraction)


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


def split_by_lead(lead_ids: Sequence[str], valid_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Row indices per split by a hash of the lead id: all of a lead's rows are in one split.

    The fractions are of leads, so of rows only approximately. A lead keeps its split across runs, seeds and
    longer histories (test is the lowest hash range: a larger valid_fraction takes no lead out of test).
    """
    position: dict[str, float] = {}
    for lead_id in lead_ids:
        if lead_id not in position:
            digest = hashlib.blake2b(lead_id.encode(), digest_size=8).digest()
            position[lead_id] = int.from_bytes(digest, "big") / 2**64
    at = np.array([position[lead_id] for lead_id in lead_ids], dtype=np.float64)
    test = at < test_fraction
    valid = ~test & (at < test_fraction + valid_fraction)
    return {
        "train": np.flatnonzero(~test & ~valid),
        "valid": np.flatnonzero(valid),
        "test": np.flatnonzero(test),
    }


def category_vocabularies(
    rows: Sequence[Mapping[str, FeatureValue]], attributes: Sequence[str], options: TrainingOptions
) -> dict[str, list[str]]:
    """Per profile attribute, its values seen in training, most frequent first (ties by name).

    Values seen fewer than `min_category_count` times, or beyond the `max_categories` most frequent, are not
    listed; the vocabulary then ends with OTHER_CATEGORY, the bucket they (and values first seen after
    training) are encoded as, so that they count as "some other value" rather than as missing.
    """
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
        vocabulary = common[: options.max_categories]
        if len(vocabulary) < len(counts) and OTHER_CATEGORY not in vocabulary:
            vocabulary.append(OTHER_CATEGORY)
        vocabularies[attribute] = vocabulary
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


# --- calibration ---------------------------------------------------------------------------------------------

# `auto` rejects a calibration that costs more than this of the booster's validation ROC-AUC or PR-AUC (beyond
# one standard error). The loss is measured paired (the same held-out rows with and without the map), so it is not
# the sampling noise of the AUC itself (a bootstrap standard error of ~0.01-0.03 on a few hundred positives would
# be the wrong yardstick) but the ties the map creates, and a fixed 0.005 is a small fraction of any difference
# worth acting on. Measured: isotonic on the shipped model's validation split (293 positives) lost 0.0004 +- 0.0008
# ROC-AUC but 0.026 +- 0.008 PR-AUC (its top step served 99.99% to 5 test leads, 3 of which converted); the
# collapse the issue reported (34 positives, 19 distinct scores) cost 0.13 ROC-AUC.
CALIBRATION_AUC_TOLERANCE = 0.005
# Candidates are compared on validation rows their map was not fitted on: an isotonic map scored on the rows it
# was fitted to pools exactly the misordered ones, so its in-sample log loss and ROC-AUC both flatter it.
CALIBRATION_FOLDS = 5
# Largest gap allowed between a sigmoid and its knots at an interval's midpoint (where linear interpolation of a
# smooth curve errs most; on a fine grid the largest gap stays within 10% of it), well under the 1e-6 the knots
# promise. Slopes from 0.3 to 2.5 then take 900 to 3,200 knots (40-130 KB of metadata); 1e-7 took twice as many.
SIGMOID_KNOT_TOLERANCE = 4e-7
# Sigmoid knots span at most these logits: past them a probability is 0 or 1 to within 1e-13.
_LOGIT_LIMIT = 30.0
_PROBABILITY_FLOOR = 1e-15  # raw probabilities are clipped into (0, 1) before taking their logit
# The standard error of a ranking loss that could not be measured fold by fold: as wide as an AUC can be off.
_UNKNOWN_ERROR = 1.0
CalibrationMap = Callable[[np.ndarray], np.ndarray]


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
    return Calibration(method=CalibrationMethod.ISOTONIC, raw=raw, calibrated=calibrated)


def _logit(raw: np.ndarray) -> np.ndarray:
    result: np.ndarray = logit(np.clip(raw, _PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR))
    return result


@dataclass(frozen=True)
class Sigmoid:
    """Platt scaling: calibrated = 1 / (1 + exp(-(slope * logit(raw) + intercept))); strictly increasing when
    slope > 0, so it keeps the booster's ranking exactly."""

    slope: float
    intercept: float

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return self.of_logit(_logit(np.asarray(raw, dtype=np.float64)))

    def of_logit(self, z: np.ndarray) -> np.ndarray:
        result: np.ndarray = expit(self.slope * z + self.intercept)
        return result


def fit_sigmoid(raw: np.ndarray, labels: np.ndarray) -> Sigmoid:
    """Platt's fit: a logistic regression of the outcome on logit(raw), by Newton's method.

    The targets are Platt's (n+ + 1) / (n+ + 2) for a positive and 1 / (n- + 2) for a negative instead of 1
    and 0, so a validation split that the booster happens to separate perfectly still gives a finite slope.
    """
    z = _logit(np.asarray(raw, dtype=np.float64))
    positives = float(labels.sum())
    negatives = float(len(labels) - positives)
    target = np.where(labels > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    design = np.column_stack([z, np.ones_like(z)])

    def loss(theta: np.ndarray) -> float:
        score = design @ theta
        return float(np.sum(np.logaddexp(0.0, score) - target * score))

    theta = np.array([1.0, 0.0])  # the identity map: the booster's probability as it is
    current = loss(theta)
    for _ in range(100):
        p = expit(design @ theta)
        gradient = design.T @ (p - target)
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-10 and loss(theta - scale * step) > current:  # backtrack: never go uphill
            scale /= 2
        theta = theta - scale * step
        previous, current = current, loss(theta)
        if previous - current <= 1e-12 * max(abs(current), 1.0):
            break
    return Sigmoid(float(theta[0]), float(theta[1]))


def calibration_from_sigmoid(sigmoid: Sigmoid, low_logit: float, high_logit: float) -> Calibration:
    """The sigmoid as knots for np.interp, dense enough on [low_logit, high_logit] (the raw scores the booster
    can produce) that interpolating them is within 1e-6 of the sigmoid.

    Knots start evenly spaced on the logit scale; any interval whose midpoint misses by more than
    SIGMOID_KNOT_TOLERANCE is halved, until none does.
    """
    low = max(min(low_logit, high_logit), -_LOGIT_LIMIT)
    high = min(max(low_logit, high_logit), _LOGIT_LIMIT)
    if high - low < 1e-6:  # a booster with one constant output: any short span around it
        low, high = low - 1.0, high + 1.0
    z = np.linspace(low, high, 65)
    for _ in range(40):
        p, c = expit(z), sigmoid.of_logit(z)
        middle = (p[:-1] + p[1:]) / 2
        missed = np.abs(sigmoid(middle) - (c[:-1] + c[1:]) / 2) > SIGMOID_KNOT_TOLERANCE
        if not missed.any():
            break
        z = np.sort(np.concatenate([z, (z[:-1][missed] + z[1:][missed]) / 2]))
    p, c = expit(z), sigmoid.of_logit(z)
    increasing = np.concatenate([[True], np.diff(p) > 0])  # np.interp needs increasing knots
    return Calibration(method=CalibrationMethod.SIGMOID, raw=p[increasing].tolist(), calibrated=c[increasing].tolist())


def raw_logit_bounds(booster: lgb.Booster, num_iteration: int) -> tuple[float, float]:
    """The lowest and highest raw score (logit) the booster can output: per tree its lowest and highest leaf,
    summed (the starting score is in the first tree's leaves)."""
    low = high = 0.0
    for tree in booster.dump_model(num_iteration=num_iteration)["tree_info"]:
        leaves = list(_leaf_values(tree["tree_structure"]))
        low += min(leaves)
        high += max(leaves)
    return low, high


def _leaf_values(node: Mapping[str, Any]) -> Iterator[float]:
    if "leaf_value" in node:
        yield float(node["leaf_value"])
        return
    yield from _leaf_values(node["left_child"])
    yield from _leaf_values(node["right_child"])


def apply_calibration(calibration: Calibration | None, raw: np.ndarray) -> np.ndarray:
    """Exactly what Scorer.predict does with a model's calibration (None: the raw probability)."""
    if calibration is None:
        return raw
    calibrated: np.ndarray = np.interp(raw, np.asarray(calibration.raw), np.asarray(calibration.calibrated))
    return calibrated


def _identity(raw: np.ndarray) -> np.ndarray:
    return raw


def _isotonic_map(isotonic: IsotonicRegression) -> CalibrationMap:
    return lambda raw: np.asarray(isotonic.predict(raw))


def _fit_map(method: CalibrationMethod, raw: np.ndarray, labels: np.ndarray) -> CalibrationMap:
    if method is CalibrationMethod.SIGMOID:
        return fit_sigmoid(raw, labels)
    if method is CalibrationMethod.ISOTONIC:
        return _isotonic_map(fit_isotonic(raw, labels))
    return _identity


@dataclass(frozen=True)
class ChosenCalibration:
    """The calibration a model serves with, why it was chosen, and the fitted map itself (to check the knots)."""

    calibration: Calibration | None  # None: serve the raw probability
    selection: CalibrationSelection
    exact: CalibrationMap


def _cross_fitted(
    method: CalibrationMethod, raw: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int
) -> dict[str, float]:
    """How `method` does on validation rows its map was not fitted on: the ROC-AUC and PR-AUC it loses (`*_lost`,
    the mean over folds of the fold's figure before minus after the map, paired on the same rows) with the
    standard errors of those means (`*_lost_se`), and the log loss over all out-of-fold predictions.

    Folds keep a lead's rows together.
    """
    folds = _lead_folds(labels, groups, seed)
    if not folds:  # too few leads to hold any out: judged on the rows it was fitted to, with no error known
        folds = [(np.arange(len(raw)), np.arange(len(raw)))]
    out_of_fold = np.empty_like(raw)
    lost: dict[str, list[float]] = {"roc_auc": [], "pr_auc": []}
    for fit_rows, held_rows in folds:
        mapped = _fit_map(method, raw[fit_rows], labels[fit_rows])(raw[held_rows])
        out_of_fold[held_rows] = mapped
        held_labels = labels[held_rows]
        if 0 < held_labels.sum() < len(held_labels):
            lost["roc_auc"].append(_auc(held_labels, raw[held_rows]) - _auc(held_labels, mapped))
            lost["pr_auc"].append(
                float(average_precision_score(held_labels, raw[held_rows]))
                - float(average_precision_score(held_labels, mapped))
            )
    figures = {"log_loss": _log_loss(labels, out_of_fold)}
    for metric, per_fold in lost.items():
        mean = float(np.mean(per_fold)) if per_fold else 0.0
        figures[f"{metric}_lost"] = mean
        if len(per_fold) > 1:
            figures[f"{metric}_lost_se"] = float(np.std(per_fold, ddof=1)) / math.sqrt(len(per_fold))
        else:  # no spread to measure: a loss counts as unbounded, no loss as none
            figures[f"{metric}_lost_se"] = _UNKNOWN_ERROR if mean else 0.0
    return figures


def _lead_folds(labels: np.ndarray, groups: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) of up to CALIBRATION_FOLDS folds of leads, stratified by whether a lead has a
    converting row; no folds when there are too few leads of either kind.

    (scikit-learn's StratifiedGroupKFold does the same but took 8 s for 7,000 rows of 5,000 leads.)
    """
    leads, lead_of_row = np.unique(groups, return_inverse=True)
    converting = np.zeros(len(leads), dtype=np.int8)
    np.maximum.at(converting, lead_of_row, (labels > 0).astype(np.int8))
    folds = min(CALIBRATION_FOLDS, int(converting.sum()), int(len(leads) - converting.sum()))
    if folds < 2:
        return []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        (np.flatnonzero(~np.isin(lead_of_row, held_leads)), np.flatnonzero(np.isin(lead_of_row, held_leads)))
        for _, held_leads in splitter.split(np.zeros(len(leads)), converting)
    ]


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores))


def _log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    clipped = np.clip(probabilities, _PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR)
    return float(log_loss(labels, clipped, labels=[0, 1]))


def _keeps_ranking(candidate: Mapping[str, float]) -> bool:
    """Whether a calibration's cross-fitted ROC-AUC and PR-AUC losses are both within the tolerance by at least
    one standard error (from fold to fold the losses vary: with 30 validation positives by ~0.02, so a mean that
    happens to look harmless is not taken at its word). PR-AUC is judged too because ties at the top of the
    ranking, where a lead list is read, cost it most."""
    return all(
        candidate[f"{metric}_lost"] + candidate[f"{metric}_lost_se"] <= CALIBRATION_AUC_TOLERANCE
        for metric in ("valid_roc_auc", "valid_pr_auc")
    )


def choose_calibration(
    raw: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    policy: CalibrationPolicy,
    logit_bounds: tuple[float, float],
    seed: int,
) -> ChosenCalibration:
    """The calibration `policy` asks for, fitted on validation rows: the booster's `raw` probabilities, their
    outcomes and their leads (`groups`); `logit_bounds` are the raw scores the booster can output.

    `auto` takes, of sigmoid and isotonic, the one with the lower cross-fitted validation log loss among those
    whose cross-fitted validation ROC-AUC and PR-AUC are within CALIBRATION_AUC_TOLERANCE of the booster's own
    (counting the standard error of the loss from fold to fold). Sigmoid keeps the ranking exactly, so it
    qualifies unless its slope comes out negative (a booster that ranks worse than chance: then neither does,
    and the raw probability is served); isotonic qualifies when the ties it makes cost little ranking, which
    with few positives, or few rows in its top step, it often does not. The booster's own probability is listed
    with the candidates for comparison.
    """
    uncalibrated_auc = _auc(labels, raw)
    uncalibrated_pr_auc = float(average_precision_score(labels, raw))
    candidates: dict[str, dict[str, float]] = {
        CalibrationMethod.NONE.value: {
            "valid_roc_auc": uncalibrated_auc,
            "valid_roc_auc_lost": 0.0,
            "valid_roc_auc_lost_se": 0.0,
            "valid_pr_auc": uncalibrated_pr_auc,
            "valid_pr_auc_lost": 0.0,
            "valid_pr_auc_lost_se": 0.0,
            "valid_log_loss": _log_loss(labels, raw),
            "distinct_values": float(len(np.unique(raw))),
        }
    }
    fitted: dict[CalibrationMethod, tuple[Calibration, CalibrationMap]] = {}
    for method in (CalibrationMethod.SIGMOID, CalibrationMethod.ISOTONIC):
        figures = _cross_fitted(method, raw, labels, groups, seed)
        if method is CalibrationMethod.SIGMOID:
            sigmoid = fit_sigmoid(raw, labels)
            fitted[method] = (calibration_from_sigmoid(sigmoid, *logit_bounds), sigmoid)
        else:
            isotonic = fit_isotonic(raw, labels)
            fitted[method] = (calibration_from_isotonic(isotonic), _isotonic_map(isotonic))
        candidates[method.value] = {
            "valid_roc_auc": uncalibrated_auc - figures["roc_auc_lost"],
            "valid_pr_auc": uncalibrated_pr_auc - figures["pr_auc_lost"],
            **{f"valid_{key}": value for key, value in figures.items()},
            "distinct_values": float(len(np.unique(apply_calibration(fitted[method][0], raw)))),
        }
    if policy is CalibrationPolicy.AUTO:
        keeps_ranking = [
            m for m in (CalibrationMethod.SIGMOID, CalibrationMethod.ISOTONIC) if _keeps_ranking(candidates[m.value])
        ]
        log_losses = {m: candidates[m.value]["valid_log_loss"] for m in keeps_ranking}
        method = min(keeps_ranking, key=log_losses.__getitem__, default=CalibrationMethod.NONE)
    else:
        method = CalibrationMethod(policy.value)
    calibration_or_none, exact_map = fitted.get(method, (None, _identity))
    selection = CalibrationSelection(
        requested=policy.value,
        method=method,
        tolerance=CALIBRATION_AUC_TOLERANCE,
        valid_roc_auc_uncalibrated=uncalibrated_auc,
        valid_roc_auc=candidates[method.value]["valid_roc_auc"],
        candidates=candidates,
    )
    return ChosenCalibration(calibration_or_none, selection, exact_map)


# --- the whole run -------------------------------------------------------------------------------------------


def train_model(
    events_path: Path, spec: FeatureSpec, out_dir: Path, options: TrainingOptions, progress: bool = True
) -> ModelMetadata:
    """Train, calibrate and evaluate a model on an event history; write it to `out_dir` and return its metadata."""
    history = read_history(events_path, spec, progress)
    if not history.leads:
        raise ValueError(f"{events_path} has no valid events ({history.invalid_lines} invalid lines)")
    table, replay = build_snapshots(history, spec, options, progress)
    _require_rows(table, history, options)

    names = feature_names(spec)
    splits = split_rows(table, options)
    labels = {name: table.labels[index].astype(np.float64) for name, index in splits.items()}
    _require_positives(labels, spec, options)
    lead_codes = table.lead_codes
    groups = {name: lead_codes[index] for name, index in splits.items()}
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
    chosen = choose_calibration(
        raw["valid"],
        labels["valid"],
        groups["valid"],
        options.calibration,
        raw_logit_bounds(booster, best_iteration),
        options.seed,
    )
    served_test = apply_calibration(chosen.calibration, raw["test"])

    test_labels = labels["test"]
    metrics = score_metrics(test_labels, served_test, served_test)
    uncalibrated = score_metrics(test_labels, raw["test"], raw["test"])
    metrics.update({f"{key}_uncalibrated": value for key, value in uncalibrated.items() if key != "base_rate"})
    points = {name: np.array([points_score(table.values[i], spec) for i in index]) for name, index in splits.items()}
    # Points are not probabilities: for log loss and ECE they get an isotonic map fitted on validation.
    points_probability = np.asarray(fit_isotonic(points["valid"], labels["valid"]).predict(points["test"]))
    baseline_metrics = score_metrics(test_labels, points["test"], points_probability)
    logistic = fit_logistic_baseline(matrices["train"], labels["train"], layout)
    logistic_test = np.asarray(logistic.predict_proba(matrices["test"])[:, 1])
    logistic_metrics = score_metrics(test_labels, logistic_test, logistic_test)
    intervals = bootstrap_intervals(
        test_labels,
        {"model": served_test, "uncalibrated": raw["test"], "points": points["test"], "logistic": logistic_test},
        groups["test"],
        seed=options.seed,
    )
    metrics.update(intervals["model"])
    metrics.update({f"{key}_uncalibrated": value for key, value in intervals["uncalibrated"].items()})
    baseline_metrics.update(intervals["points"])
    logistic_metrics.update(intervals["logistic"])

    gains = booster.feature_importance(importance_type="gain", iteration=best_iteration)
    total_gain = max(float(gains.sum()), 1e-12)
    importance = {name: float(gain) / total_gain for name, gain in zip(names, gains, strict=True)}
    positives = {name: int(split_labels.sum()) for name, split_labels in labels.items()}
    warnings = training_warnings(
        positives,
        metrics,
        {"points": baseline_metrics, "logistic regression": logistic_metrics},
        importance,
        chosen.selection,
    )
    for warning in warnings:
        log.warning("%s", warning.message)

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
        positives=positives,
        metrics=metrics,
        baseline_metrics=baseline_metrics,
        logistic_baseline_metrics=logistic_metrics,
        calibration=chosen.calibration,
        calibration_selection=chosen.selection,
        warnings=warnings,
        training_settings={**options.settings, "exit_types": ", ".join(spec.exit_types) or None},
        training_data={
            "events": history.events,
            "leads": len(history.leads),
            "invalid_lines": history.invalid_lines,
            "duplicate_events": replay.duplicate_events,
            "exited_leads": replay.exited_leads,
            "positives_train": positives["train"],
            "best_iteration": best_iteration,
        },
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(out_dir / MODEL_FILE, booster.model_to_string(num_iteration=best_iteration))
    _write_atomically(out_dir / METADATA_FILE, metadata.model_dump_json(indent=2))
    _verify_artifact(out_dir, spec, matrices["test"], served_test, chosen.exact(raw["test"]))
    if options.report:
        test_scores = HeldOutScores(
            test_labels, served_test, raw["test"], points["test"], points_probability, logistic_test
        )
        write_report(out_dir, metadata, test_scores, importance)
    return metadata


def _verify_artifact(
    out_dir: Path, spec: FeatureSpec, test_matrix: np.ndarray, expected: np.ndarray, exact: np.ndarray
) -> None:
    """Load the artifact as the service does; its predictions must be the ones just measured, and within 1e-6 of
    the fitted calibration itself (its knots approximate a sigmoid)."""
    scorer = Scorer.load(out_dir)
    scorer.check_compatible(spec)
    served = scorer.predict(test_matrix)
    if not np.allclose(served, expected, rtol=0, atol=1e-9):
        worst = float(np.max(np.abs(served - expected)))
        raise RuntimeError(f"the written model at {out_dir} does not reproduce its calibrated scores (off by {worst})")
    if not np.allclose(served, exact, rtol=0, atol=1e-6):
        worst = float(np.max(np.abs(served - exact)))
        raise RuntimeError(f"the calibration knots of the model at {out_dir} miss the fitted map by {worst}")


def _require_rows(table: SnapshotTable, history: EventHistory, options: TrainingOptions) -> None:
    days = (history.end_ms - history.start_ms) / DAY_MS
    if len(table) < 100:
        window = " inside the training window" if options.window_start_ms or options.window_end_ms else ""
        raise ValueError(
            f"only {len(table)} snapshots{window} from {len(history.leads)} leads over {days:.1f} days of history "
            f"with a {options.horizon_days:g}-day horizon; use a longer history, more leads, or a shorter horizon"
        )


def _require_positives(labels: Mapping[str, np.ndarray], spec: FeatureSpec, options: TrainingOptions) -> None:
    """Refuse to train when a split has fewer positives than `min_positives`, or no negatives."""
    for split in SPLITS:
        split_labels = labels[split]
        positives = int(split_labels.sum())
        if positives == len(split_labels):
            raise ValueError(
                f"the {split} split's {len(split_labels)} snapshots are all positive; a model needs both converting"
                " and non-converting leads in every split (use more history)"
            )
        if positives < options.min_positives:
            larger = f", a larger {split}_fraction" if split != "train" else ""
            raise ValueError(
                f"the {split} split has {positives} positive snapshots ({spec.conversion_type!r} within "
                f"{options.horizon_days:g} days) of {len(split_labels):,}, fewer than min_positives "
                f"{options.min_positives}: metrics on so few are noise. Use a longer history, more leads, a longer "
                f"horizon{larger}, or lower training.min_positives in the config (--min-positives)"
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
