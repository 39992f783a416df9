"""The `leadscore` command as a new user meets it: fast, documented help, and failures a user can fix told in one
or two lines (no traceback unless --debug), with a non-zero exit code."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from app.cli.main import build_parser
from devtools.servers import LOOPBACK, LocalProcess, free_port, leadscore_process
from tests.support import REPO_ROOT, run_leadscore, wait_until

HEAVY_MODULES = ("numpy", "lightgbm", "fastapi", "aiokafka", "redis", "pydantic", "uvicorn", "sklearn")


def user_env(**settings: str) -> dict[str, str]:
    """The environment of a user's shell: no LEADSCORE_* of the test run, plus `settings`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEADSCORE_")}
    env.update({f"LEADSCORE_{key.upper()}": value for key, value in settings.items()})
    return env


def unreachable_redis() -> str:
    return f"redis://{LOOPBACK}:{free_port()}/0"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen()
        yield sock.getsockname()[1]


def assert_plain_failure(result: subprocess.CompletedProcess[str], code: int, *expected: str) -> None:
    """Exit `code`, a message naming every `expected` piece, and no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr[-1500:])
    assert "Traceback" not in result.stderr, result.stderr[-1500:]
    for piece in expected:
        assert piece in result.stderr, (piece, result.stderr[-1500:])


def test_every_command_and_option_is_documented() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) >= {"serve", "consume", "dev", "simulate", "train", "lead", "models", "rescore"}
    for name, command in subparsers.choices.items():
        assert command.description, name
        for action in command._actions:
            assert action.help, f"leadscore {name} {'/'.join(action.option_strings) or action.dest} has no help text"
        rendered = command.format_help()
        for action in command._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert str(action.default) in rendered, f"{name} {action.option_strings}: default not shown"


def test_the_command_module_imports_nothing_heavy_so_help_is_quick() -> None:
    probe = f"import sys, app.cli; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY_MODULES)!r}))"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]", imported.stdout
    helped = run_leadscore(user_env(), "--help", timeout=30)
    assert helped.returncode == 0 and "dev" in helped.stdout


@pytest.mark.parametrize(
    ("settings", "named", "not_echoed"),
    [
        ({"batch_max_records": "lots"}, "LEADSCORE_BATCH_MAX_RECORDS='lots'", None),
        ({"redis_url": "localhost:6379"}, "LEADSCORE_REDIS_URL", None),
        ({"api_keys": '["s3cret",'}, "LEADSCORE_API_KEYS", "s3cret"),
        ({"log_level": "verbose"}, "'DEBUG', 'INFO', 'WARNING'", None),
    ],
)
def test_a_bad_setting_names_the_variable_and_what_it_expects(
    settings: dict[str, str], named: str, not_echoed: str | None
) -> None:
    result = run_leadscore(user_env(**settings), "consume", "--metrics-port", "0", timeout=30)
    assert_plain_failure(result, 2, named)
    assert len(result.stderr.strip().splitlines()) <= 2
    if not_echoed is not None:
        assert not_echoed not in result.stderr, "a secret was echoed"


def test_debug_shows_the_traceback() -> None:
    result = run_leadscore(user_env(batch_max_records="lots"), "--debug", "consume", timeout=30)
    assert result.returncode != 0 and "Traceback" in result.stderr and "LEADSCORE_BATCH_MAX_RECORDS" in result.stderr


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text("features:\n  signals:\n    - {name: x, types: [a]\nsegments: {}\n")
    result = run_leadscore(user_env(config_path=str(config)), "serve", "--port", "0", timeout=30)
    assert_plain_failure(result, 2, f"{config}:")
    line = result.stderr.split(f"{config}:", 1)[1].split(":", 1)[0]
    assert line.isdigit() and 3 <= int(line) <= 4, result.stderr


def test_a_missing_model_directory_says_which_setting_to_fix(tmp_path: Path) -> None:
    env = user_env(model_path=str(tmp_path / "no-model"), redis_url=unreachable_redis(), redis_timeout_seconds="0.3")
    result = run_leadscore(env, "serve", "--port", "0", timeout=60)
    assert_plain_failure(result, 2, "no-model", "no such directory", "LEADSCORE_MODEL_PATH")


def test_a_taken_port_is_named_with_the_option_that_changes_it(taken_port: int, tmp_path: Path) -> None:
    env = user_env(redis_url=unreachable_redis(), redis_timeout_seconds="0.3")
    for command, option in (
        (["serve", "--port", str(taken_port)], "--port"),
        (["consume", "--metrics-port", str(taken_port)], "--metrics-port"),
        (["dev", "--port", str(taken_port), "--workdir", str(tmp_path / "dev")], "--port"),
    ):
        result = run_leadscore(env, *command, timeout=60)
        assert_plain_failure(result, 3, f"port {taken_port}", "already in use", option)
    assert not (tmp_path / "dev").exists(), "dev started servers before finding its port taken"


def test_unreachable_redis_or_kafka_is_one_line_saying_which_setting_points_there() -> None:
    redis_url = unreachable_redis()
    listed = run_leadscore(user_env(redis_url=redis_url, redis_timeout_seconds="0.3"), "models", "list", timeout=30)
    assert_plain_failure(listed, 3, f"cannot reach Redis at {redis_url}", "LEADSCORE_REDIS_URL")
    assert len(listed.stderr.strip().splitlines()) == 1

    servers = f"{LOOPBACK}:{free_port()}"
    produced = run_leadscore(
        user_env(kafka_bootstrap_servers=servers), "simulate", "--kafka", "--limit", "1", timeout=60
    )
    assert_plain_failure(produced, 3, f"cannot reach Kafka at {servers}", "LEADSCORE_KAFKA_BOOTSTRAP_SERVERS")


def test_a_reader_that_goes_away_is_not_reported_as_an_error(tmp_path: Path) -> None:
    """`leadscore ... | head` closes the pipe early: no message about Redis or Kafka, no traceback."""
    with subprocess.Popen(
        [sys.executable, "-m", "app", "config", "check"],
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # before the command writes a byte
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=30) == 141, stderr
    assert stderr == "", stderr


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_consumer_waits_for_the_broker_and_stops_cleanly(tmp_path: Path, log_format: str) -> None:
    port = free_port()
    env = user_env(
        kafka_bootstrap_servers=f"{LOOPBACK}:{free_port()}",
        redis_url=unreachable_redis(),
        redis_timeout_seconds="0.3",
        log_format=log_format,
    )
    consumer: LocalProcess = leadscore_process("consumer", ["consume", "--metrics-port", str(port)], env, tmp_path)
    with consumer:

        def waiting() -> bool:
            assert consumer.running, consumer.log_tail()
            response = httpx.get(f"http://{LOOPBACK}:{port}/readyz", timeout=2)
            return response.status_code == 503 and response.json()["status"] == "waiting_for_broker"

        wait_until(waiting, timeout=60, message="consumer reports it waits for the broker", ignore=(httpx.HTTPError,))
        body = httpx.get(f"http://{LOOPBACK}:{port}/readyz", timeout=2).json()
        assert "Unable to bootstrap" in body["broker_error"]
        assert httpx.get(f"http://{LOOPBACK}:{port}/healthz", timeout=2).status_code == 200
        assert consumer.pid is not None
        os.kill(consumer.pid, signal.SIGTERM)
        wait_until(lambda: not consumer.running, timeout=20, message="consumer stopped on SIGTERM")
    assert consumer.returncode == 0
    log = consumer.log_path.read_text()
    assert "waiting for Kafka at" in log and "LEADSCORE_KAFKA_BOOTSTRAP_SERVERS" in log
    for noise in ("Traceback", "Unclosed", "Unable connect to"):
        assert noise not in log, f"{noise!r} in the consumer's log:\n{log[-2000:]}"
    if log_format == "json":
        lines = [orjson.loads(line) for line in log.splitlines() if line.strip()]
        assert lines and all({"time", "level", "component", "message"} <= set(line) for line in lines)
        waiting_line = next(line for line in lines if "waiting for Kafka at" in line["message"])
        assert waiting_line["level"] == "WARNING" and waiting_line["component"].startswith("consumers")


def test_config_check_reports_problems_with_lines_and_exit_codes(tmp_path: Path) -> None:
    clean = run_leadscore(user_env(), "config", "check", timeout=30)
    assert clean.returncode == 0 and "no problems" in clean.stdout, clean.stdout + clean.stderr
    config = tmp_path / "typo.yaml"
    shipped = REPO_ROOT / "models" / "default_config.yaml"
    shipped_text = shipped.read_text()
    assert "feature.hours_since_last_event" in shipped_text
    config.write_text(shipped_text.replace("feature.hours_since_last_event", "feature.hours_since_last_evnt", 1))
    checked = run_leadscore(user_env(), "config", "check", str(config), timeout=30)
    assert checked.returncode == 1, checked.stdout
    assert f"{config}:" in checked.stdout and "did you mean 'hours_since_last_event'" in checked.stdout


def test_train_ends_with_a_short_summary(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    simulated = run_leadscore(
        user_env(), "simulate", "--out", str(history), "--leads", "1500", "--days", "60", "--seed", "5", timeout=120
    )
    assert simulated.returncode == 0, simulated.stderr
    out = tmp_path / "model"
    trained = run_leadscore(
        user_env(), "train", "--events", str(history), "--out", str(out), "--version", "t-1", "--quiet", timeout=300
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    lines = trained.stdout.strip().splitlines()
    assert 3 <= len(lines) <= 8, trained.stdout
    assert lines[0] == "trained model t-1"
    assert "ROC-AUC" in trained.stdout and "points baseline" in trained.stdout
    assert str(out / "report.md") in trained.stdout and (out / "report.md").exists()
    assert "leadscore models register" in trained.stdout
    metadata = json.loads((out / "metadata.json").read_text())
    assert f"{metadata['metrics']['roc_auc']:.3f}" in trained.stdout
