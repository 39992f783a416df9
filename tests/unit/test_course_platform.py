"""The course-platform example (docs/examples): its config checks clean; its numeric signals, time features and
numeric profile attributes are the same in the serving fold as in training; an exit ends a student's snapshots;
and `leadscore train` on its log writes a model that beats the points baseline."""

from __future__ import annotations

import gzip
import importlib.util
import math
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType

import orjson
import pytest

from app.settings import ServiceConfig
from consumers.messages import Rejection, parse_message
from models.spec import FeatureSpec
from models.state import LeadState, fold
from models.training import SnapshotTable, TrainingOptions, build_snapshots, read_history
from models.vector import FeatureBatch, FeatureValue
from schemas.events import EngagementEvent
from tests.support import REPO_ROOT

EXAMPLES = REPO_ROOT / "docs" / "examples"
CONFIG = EXAMPLES / "course_platform.yaml"
EXITS = ("withdrawn", "programme_ended")
# Features the example adds beyond counted events; each must be compared on rows where it has a value.
NEW_FEATURES = (
    "clicks_decayed",
    "score_last",
    "top_score_max",
    "days_since_start",
    "days_since_last_assessment_submitted",
    "prior_credits",
)


def _generator() -> ModuleType:
    """docs/examples/course_log.py, a standalone script rather than a package module."""
    spec = importlib.util.spec_from_file_location("course_log", EXAMPLES / "course_log.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def config() -> ServiceConfig:
    return ServiceConfig.load(CONFIG)


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    generator = _generator()
    path = tmp_path_factory.mktemp("course") / "course.jsonl.gz"
    generator.write_course_log(path, generator.course_events(160, 11))
    return path


@pytest.fixture(scope="module")
def served_events(small_log: Path) -> dict[str, list[EngagementEvent]]:
    """Each student's events as the consumer parses them off Kafka (every property kept), in file order."""
    events: dict[str, list[EngagementEvent]] = defaultdict(list)
    with gzip.open(small_log, "rb") as lines:
        for line in lines:
            lead_id = orjson.loads(line)["lead_id"]
            event = parse_message(lead_id.encode(), line.rstrip(b"\n"), max_bytes=65_536)
            assert not isinstance(event, Rejection), event
            events[lead_id].append(event)
    return events


@pytest.fixture(scope="module")
def snapshots(small_log: Path, config: ServiceConfig) -> SnapshotTable:
    """Training's snapshots of the small log, taken as the example's `training:` section says."""
    history = read_history(small_log, config.features)
    table, _ = build_snapshots(history, config.features, TrainingOptions.from_spec(config.training))
    return table


def test_the_example_config_checks_clean() -> None:
    assert ServiceConfig.check(CONFIG) == []


def _serving_state(events: list[EngagementEvent], spec: FeatureSpec, rng: random.Random) -> LeadState:
    """The state the consumer reaches from these events arriving shuffled, in micro-batches of random sizes."""
    pending = list(events)
    rng.shuffle(pending)
    state = LeadState()
    while pending:
        size = rng.randint(1, 25)
        state = fold(state, pending[:size], spec)
        pending = pending[size:]
    return state


def _same(served: FeatureValue, trained: FeatureValue) -> bool:
    if isinstance(served, float) and isinstance(trained, float):
        # The fold's decayed sums depend on event order only through float rounding.
        return math.isclose(served, trained, rel_tol=1e-9)
    return served == trained


def test_numeric_signals_are_equal_in_the_serving_fold_and_in_training(
    config: ServiceConfig, served_events: dict[str, list[EngagementEvent]], snapshots: SnapshotTable
) -> None:
    spec = config.features
    rng = random.Random(23)
    rows = rng.sample(range(len(snapshots)), min(200, len(snapshots)))
    with_value = dict.fromkeys(NEW_FEATURES, 0)
    neighbour = LeadState()  # the consumer scores a micro-batch of leads: never a batch of one here
    for row in rows:
        lead_id, at_ms = snapshots.lead_ids[row], int(snapshots.at_ms[row])
        state = _serving_state([e for e in served_events[lead_id] if e.ts <= at_ms], spec, rng)
        batch = FeatureBatch.of([neighbour, state], at_ms, spec)
        served = dict(zip(batch.names, batch.row(1), strict=True))
        trained = snapshots.values[row]
        assert served.keys() == trained.keys()
        differing = {name: (served[name], trained[name]) for name in served if not _same(served[name], trained[name])}
        assert not differing, f"{lead_id} at {at_ms}: served != trained for {differing}"
        for name in NEW_FEATURES:
            with_value[name] += served[name] is not None and served[name] != 0
        neighbour = state
    # Each new feature was compared where it holds a value, not only where both sides are empty.
    assert all(count >= 20 for count in with_value.values()), with_value


def _readable_clicks(properties: dict[str, object]) -> int | None:
    """The generator's clicks as a number: an int, or digits sent as text; anything else is malformed."""
    clicks = properties.get("clicks")
    if isinstance(clicks, int) and not isinstance(clicks, bool):
        return clicks
    if isinstance(clicks, str) and clicks.isdigit():
        return int(clicks)
    return None


def test_malformed_click_values_are_counted_and_add_nothing(
    config: ServiceConfig, served_events: dict[str, list[EngagementEvent]]
) -> None:
    spec = config.features
    (clicks,) = [s for s in spec.signals if s.name == "clicks"]
    rng = random.Random(4)
    malformed_seen = text_seen = 0
    for events in served_events.values():
        sessions = [e for e in events if e.type == "session"]
        if not sessions:
            continue
        at_ms = max(e.ts for e in events)
        state = _serving_state(events, spec, rng)
        readable = [(e.ts, _readable_clicks(e.properties)) for e in sessions]
        malformed = sum(value is None for _, value in readable)
        assert state.invalid_values.get("clicks", 0) == malformed
        expected = sum(value * 0.5 ** ((at_ms - ts) / clicks.half_life_ms) for ts, value in readable if value)
        batch = FeatureBatch.of([state], at_ms, spec)
        served = dict(zip(batch.names, batch.row(0), strict=True))["clicks_decayed"]
        assert isinstance(served, float) and math.isclose(served, expected, rel_tol=1e-9)
        malformed_seen += malformed
        text_seen += sum(
            isinstance(e.properties.get("clicks"), str) and value is not None
            for e, (_, value) in zip(sessions, readable, strict=True)
        )
    assert malformed_seen >= 20 and text_seen >= 20  # the log has both kinds, so both paths were exercised


def test_no_snapshot_at_or_after_a_students_exit(
    config: ServiceConfig, served_events: dict[str, list[EngagementEvent]], small_log: Path
) -> None:
    first_exit = {
        lead_id: min(e.ts for e in events if e.type in EXITS)
        for lead_id, events in served_events.items()
        if any(e.type in EXITS for e in events)
    }
    withdrawn = {lead_id for lead_id, events in served_events.items() if any(e.type == "withdrawn" for e in events)}
    options = TrainingOptions.from_spec(config.training)
    history = read_history(small_log, config.features)

    def snapshots_after_an_exit(spec: FeatureSpec) -> tuple[int, int]:
        """(snapshots at or after their student's exit, withdrawn students with a snapshot)"""
        table, _ = build_snapshots(history, spec, options)
        late = sum(
            lead_id in first_exit and at_ms >= first_exit[lead_id]
            for lead_id, at_ms in zip(table.lead_ids, table.at_ms.tolist(), strict=True)
        )
        return late, len(withdrawn.intersection(table.lead_ids))

    late, withdrawn_sampled = snapshots_after_an_exit(config.features)
    assert late == 0
    assert withdrawn_sampled >= 10  # withdrawn students are sampled, before they withdraw
    # The same history without exit types: training would sample students after they left.
    without_exits = FeatureSpec.model_validate({**config.features.model_dump(), "exit_types": []})
    late_without_exits, _ = snapshots_after_an_exit(without_exits)
    assert late_without_exits >= 10


def test_leadscore_train_on_a_course_log_beats_the_points_baseline(tmp_path: Path) -> None:
    generator = _generator()
    log = tmp_path / "course.jsonl.gz"
    # Seed 4, not the walkthrough's 1; 1,200 students give each split well over the config's 50 positives.
    generator.write_course_log(log, generator.course_events(1200, 4))
    out = tmp_path / "course-model"
    command = ["train", "--events", str(log), "--config", str(CONFIG), "--out", str(out), "--quiet", "--seed", "3"]
    trained = subprocess.run(
        [sys.executable, "-m", "app", *command], capture_output=True, text=True, timeout=300, check=False
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert {"model.txt", "metadata.json", "report.md"} <= {p.name for p in out.iterdir()}
    metadata = orjson.loads((out / "metadata.json").read_bytes())
    assert metadata["horizon_days"] == 270  # the config's training section was used
    model, points = metadata["metrics"]["roc_auc"], metadata["baseline_metrics"]["roc_auc"]
    assert model > 0.5 and model > points, (model, points)
    assert "passed" in (out / "report.md").read_text()
