"""The config's `training:` section: into TrainingOptions, overridden by `leadscore train` flags, errors at its line."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

import models.training
from app.cli.main import build_parser, main
from app.settings import ServiceConfig
from models.spec import DEFAULT_CONFIG_PATH, ConfigError, FeatureSpec, Severity
from models.training import TrainingOptions
from models.training_spec import CalibrationPolicy, SplitMethod, TrainingSpec
from schemas.model import ModelMetadata

DAY_MS = 86_400_000
SHIPPED = DEFAULT_CONFIG_PATH.read_text()

TRAINING = """\
training:
  horizon: 14d
  snapshot_every_days: 3
  max_snapshots_per_lead: 4
  window_start: 2026-08-15
  window_end: "2026-10-01T12:00:00+02:00"
  split: lead
  valid_fraction: 0.2
  test_fraction: 0.25
  min_positives: 5
  calibration: isotonic
"""


@pytest.fixture(autouse=True)
def _keep_the_sigterm_handler() -> Iterator[None]:
    sigterm = signal.getsignal(signal.SIGTERM)  # the CLI's main installs its own handler
    yield
    signal.signal(signal.SIGTERM, sigterm)


def config_with(tmp_path: Path, training: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(SHIPPED + "\n" + training)
    return path


def line_of(path: Path, needle: str) -> int:
    lines = enumerate(path.read_text().splitlines(), start=1)
    (line,) = [n for n, text in lines if needle in text and not text.lstrip().startswith("#")]
    return line


def test_the_training_section_becomes_the_training_options(tmp_path: Path) -> None:
    config = ServiceConfig.load(config_with(tmp_path, TRAINING))
    assert ServiceConfig.check(config_with(tmp_path, TRAINING)) == []  # a known section: no warning
    options = TrainingOptions.from_spec(config.training)
    assert options.horizon_days == 14
    assert options.snapshot_every_days == 3
    assert options.max_snapshots_per_lead == 4
    assert options.window_start_ms == int(datetime(2026, 8, 15, tzinfo=UTC).timestamp() * 1000)
    assert options.window_end_ms == int(datetime(2026, 10, 1, 10, tzinfo=UTC).timestamp() * 1000)
    assert options.split is SplitMethod.LEAD
    assert (options.valid_fraction, options.test_fraction) == (0.2, 0.25)
    assert options.min_positives == 5
    assert options.calibration is CalibrationPolicy.ISOTONIC


def test_without_a_training_section_the_defaults_apply() -> None:
    config = ServiceConfig.load(None)
    assert config.training == TrainingSpec()
    assert TrainingOptions.from_spec(config.training) == TrainingOptions()
    defaults = TrainingOptions()
    assert (defaults.horizon_days, defaults.split, defaults.calibration) == (30, SplitMethod.TIME, "auto")


def test_durations_are_written_with_a_unit_or_in_days() -> None:
    assert TrainingSpec.model_validate({"horizon": "36h"}).horizon_days == 1.5
    assert TrainingSpec.model_validate({"horizon_days": 45}).horizon_days == 45
    assert TrainingSpec.model_validate({"snapshot_every": "1w"}).snapshot_every_days == 7
    window = TrainingSpec.model_validate({"window_start": "2026-09-01T08:00:00"})  # no offset: UTC
    assert window.window_start == datetime(2026, 9, 1, 8, tzinfo=UTC)


@pytest.mark.parametrize(
    ("entry", "needle", "message"),
    [
        ("  horizon: 30\n", "horizon: 30", "training.horizon: 30 is 30 ms; write a duration like '30d'"),
        ("  splt: lead\n", "splt", "training: unknown key 'splt'; did you mean 'split'?"),
        ("  split: random\n", "split: random", "training.split: Input should be 'time' or 'lead'"),
        ("  calibration: platt\n", "platt", "training.calibration: Input should be 'auto', 'isotonic'"),
        ("  window_end: last tuesday\n", "tuesday", "training.window_end: 'last tuesday' is not a date"),
        ("  min_positives: 0\n", "min_positives", "training.min_positives: Input should be greater than or equal"),
        ("  valid_fraction: 0.5\n  test_fraction: 0.5\n", "test_fraction", "leave no rows to train on"),
        ("  window_start: 2026-10-01\n  window_end: 2026-09-01\n", "window_end", "is not after window_start"),
    ],
)
def test_a_mistake_in_the_training_section_is_an_error_at_its_line(
    tmp_path: Path, entry: str, needle: str, message: str
) -> None:
    path = config_with(tmp_path, "training:\n" + entry)
    (problem,) = ServiceConfig.check(path)
    assert problem.severity is Severity.ERROR
    assert problem.line == line_of(path, needle)
    assert message in problem.message
    with pytest.raises(ConfigError) as refused:
        ServiceConfig.load(path)
    assert f"{path}:{problem.line}: " in str(refused.value)


def test_a_section_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = config_with(tmp_path, "training: [horizon]\n")
    (problem,) = ServiceConfig.check(path)
    assert problem.severity is Severity.ERROR and problem.line == line_of(path, "training:")


def test_an_unknown_top_level_key_still_warns_and_names_training(tmp_path: Path) -> None:
    path = config_with(tmp_path, "trainig:\n  horizon: 14d\n")
    (problem,) = ServiceConfig.check(path)
    assert problem.severity is Severity.WARNING
    assert "did you mean 'training'?" in problem.message


# --- leadscore train: flags over the config ----------------------------------------------------------------------


@pytest.fixture
def trained_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[TrainingOptions]:
    """The options `leadscore train` passes to train_model (which is replaced by a stand-in)."""
    seen: list[TrainingOptions] = []

    def stand_in(events: Path, spec: FeatureSpec, out: Path, options: TrainingOptions, progress: bool) -> Any:
        seen.append(options)
        at = datetime(2026, 1, 1, tzinfo=UTC)
        return ModelMetadata(
            version="v",
            feature_names=["x"],
            config_hash="h",
            conversion_type="converted",
            horizon_days=options.horizon_days,
            trained_at=at,
            training_window_start=at,
            training_window_end=at,
            seed=options.seed,
        )

    monkeypatch.setattr(models.training, "train_model", stand_in)
    return seen


def train(tmp_path: Path, config: Path, *flags: str) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("")
    argv = ["train", "--events", str(events), "--out", str(tmp_path / "m"), "--config", str(config), "--json"]
    assert main([*argv, *flags]) == 0


def test_flags_override_the_config_only_where_given(
    tmp_path: Path, trained_with: list[TrainingOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_with(tmp_path, TRAINING)
    train(tmp_path, config)
    from_config = trained_with[-1]
    assert from_config == TrainingOptions.from_spec(ServiceConfig.load(config).training)
    assert orjson.loads(capsys.readouterr().out)["version"] == "v"

    train(
        tmp_path, config,
        "--horizon-days", "7", "--split", "time", "--calibration", "sigmoid", "--window-end", "2026-09-20",
        "--min-positives", "12", "--seed", "3",
    )  # fmt: skip
    overridden = trained_with[-1]
    assert overridden.horizon_days == 7
    assert overridden.split is SplitMethod.TIME
    assert overridden.calibration is CalibrationPolicy.SIGMOID
    assert overridden.window_end_ms == int(datetime(2026, 9, 20, tzinfo=UTC).timestamp() * 1000)
    assert (overridden.min_positives, overridden.seed) == (12, 3)
    # Everything not given stays as the config says.
    assert overridden.window_start_ms == from_config.window_start_ms
    assert overridden.snapshot_every_days == 3 and overridden.max_snapshots_per_lead == 4
    assert (overridden.valid_fraction, overridden.test_fraction) == (0.2, 0.25)


def test_flags_apply_over_the_defaults_without_a_training_section(
    tmp_path: Path, trained_with: list[TrainingOptions]
) -> None:
    train(tmp_path, DEFAULT_CONFIG_PATH, "--snapshot-every-days", "2", "--max-snapshots-per-lead", "9")
    assert trained_with[-1] == TrainingOptions(snapshot_every_days=2, max_snapshots_per_lead=9)


def test_an_override_that_contradicts_the_config_is_refused_with_a_message(
    tmp_path: Path, trained_with: list[TrainingOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_with(tmp_path, TRAINING)  # window from 2026-08-15
    events = tmp_path / "events.jsonl"
    events.write_text("")
    argv = ["train", "--events", str(events), "--out", str(tmp_path / "m"), "--config", str(config)]
    assert main([*argv, "--window-end", "2026-08-01"]) == 2
    assert "the training window ends (2026-08-01 00:00) before it starts (2026-08-15 00:00)" in capsys.readouterr().err
    assert trained_with == []


def test_each_train_flag_documents_the_config_key_and_the_default() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train_options = {a.dest: a for a in commands.choices["train"]._actions}
    defaults = TrainingOptions()
    documented = {
        "horizon_days": ("training.horizon", f"else {defaults.horizon_days:g}"),
        "snapshot_every_days": ("training.snapshot_every", f"else {defaults.snapshot_every_days:g}"),
        "max_snapshots_per_lead": ("training.max_snapshots_per_lead", f"else {defaults.max_snapshots_per_lead}"),
        "window_start": ("training.window_start", "else none"),
        "window_end": ("training.window_end", "else none"),
        "split": ("training.split", f"else {defaults.split}"),
        "valid_fraction": ("training.valid_fraction", f"else {defaults.valid_fraction:g}"),
        "test_fraction": ("training.test_fraction", f"else {defaults.test_fraction:g}"),
        "min_positives": ("training.min_positives", f"else {defaults.min_positives}"),
        "calibration": ("training.calibration", f"else {defaults.calibration}"),
    }
    for dest, (key, default) in documented.items():
        action = train_options[dest]
        assert action.default is None, dest  # "not given" must be told apart from a value
        assert key in (action.help or "") and default in (action.help or ""), (dest, action.help)
