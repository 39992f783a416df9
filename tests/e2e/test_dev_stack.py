"""`leadscore dev` as the README's quick start runs it: the stack comes up, writes its settings for other
commands, and the README's follow-up commands work against it from another shell as written."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from devtools.servers import LOOPBACK, free_port, leadscore_process
from tests.support import REPO_ROOT, wait_until

REPO = REPO_ROOT


def in_another_shell(env_file: Path, commands: str) -> subprocess.CompletedProcess[str]:
    """What the README tells a user to do in a second terminal: activate the venv, source the stack's settings."""
    activate = Path(sys.executable).parent / "activate"
    script = f"set -euo pipefail\nsource {activate}\nsource {env_file}\n{commands}\n"
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEADSCORE_")}
    return subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False
    )


def test_dev_writes_its_settings_and_the_readme_commands_work_against_it(tmp_path: Path) -> None:
    env_file = tmp_path / "state" / "dev.env"
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEADSCORE_")}
    dev = leadscore_process(
        "dev",
        ["dev", "--port", str(port), "--rate", "300", "--leads", "80", "--workdir", str(tmp_path / "logs"),
         "--env-file", str(env_file)],
        env,
        tmp_path,
    )  # fmt: skip
    with dev:
        wait_until(lambda: env_file.exists() or not dev.running, timeout=180, message="dev stack up")
        assert dev.running, dev.log_tail()
        api = f"http://{LOOPBACK}:{port}"
        settings = dict(
            line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
        )
        assert settings["LEADSCORE_DEV_API"] == api
        assert settings["LEADSCORE_REDIS_URL"].startswith(f"redis://{LOOPBACK}:")
        assert settings["LEADSCORE_KAFKA_BOOTSTRAP_SERVERS"].startswith(f"{LOOPBACK}:")
        assert f"source {env_file}" in dev.log_tail(40)

        served = httpx.get(f"{api}/readyz", timeout=5).json()["model_version"]
        consumer = httpx.get(f"{settings['LEADSCORE_DEV_CONSUMER_STATUS']}/readyz", timeout=5).json()
        assert consumer["model_version"] == served, "API and consumer report the model they score with"

        def some_lead() -> str | None:
            leads = httpx.get(f"{api}/segments/tier/cold/leads?limit=1", timeout=5).json()["leads"]
            leads = leads or httpx.get(f"{api}/segments/tier/warm/leads?limit=1", timeout=5).json()["leads"]
            return leads[0]["lead_id"] if leads else None

        lead = wait_until(some_lead, timeout=60, message="a scored lead")
        shell = in_another_shell(
            env_file,
            # `| head` closes the pipe early: leadscore exits 141 as a Unix tool would, quietly (no pipefail here)
            f"leadscore models list\n(set +o pipefail; leadscore models show {served} | head -n 3)\n"
            f"leadscore lead {lead}\n"
            "leadscore rescore --quiet\ncurl -sf $LEADSCORE_DEV_API/segments >/dev/null",
        )
        assert shell.returncode == 0, shell.stderr[-2000:]
        assert f"* {served}" in shell.stdout, "the shipped model is registered and active on first start"
        assert f'"version": "{served}"' in shell.stdout
        assert f'"lead_id": "{lead}"' in shell.stdout
        assert "rescored" in shell.stdout and "segment changes published" in shell.stdout

        assert dev.pid is not None
        os.kill(dev.pid, signal.SIGINT)  # Ctrl-C
        wait_until(lambda: not dev.running, timeout=60, message="dev stopped on Ctrl-C")
    assert dev.returncode == 0, dev.log_tail()
    assert not env_file.exists(), "a stopped stack's settings would point at nothing"
    for name in ("LEADSCORE_REDIS_URL", "LEADSCORE_KAFKA_BOOTSTRAP_SERVERS", "LEADSCORE_DEV_API",
                 "LEADSCORE_DEV_CONSUMER_STATUS"):  # fmt: skip
        address = settings[name].split("//")[-1].split("/")[0]
        assert not listening(address), f"{name}: something still listens on {address} after the stack stopped"


def listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0
