"""`python -m bench.soak [--rate 1000] [--minutes 15]`: run `leadscore dev` as a new user would and record,
every sample interval, whether the consumer keeps up: its lag, events consumed per second, readiness and the
CPU of the dev broker, Redis and the consumer.

Writes bench/results/soak-<rate>.md and .json (or --out). The stack runs in its own work directory on free
ports; it is stopped at the end with SIGTERM, which it handles as Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.cpu import CpuMeter
from bench.report import machine_info, now_iso
from devtools.servers import free_port

RESULTS = Path(__file__).resolve().parent / "results"
_READY_TIMEOUT_SECONDS = 180.0


@dataclass
class Sample:
    minute: float
    lag: int
    consumed: int
    consumed_per_second: float
    ready: bool
    status: str
    cpu_broker: float
    cpu_redis: float
    cpu_consumer: float


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _consumed(metrics_text: str) -> int:
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(metrics_text)
            for sample in family.samples
            if sample.name == "leadscore_events_consumed_total"
        )
    )


def _children(pid: int) -> dict[str, int]:
    """Descendant processes of `pid` by role, from /proc: the dev broker, redis-server, the consumer."""
    roles: dict[str, int] = {}
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        commands[int(entry.name)] = command

    def descends(child: int) -> bool:
        while child in parents and child != 1:
            child = parents[child]
            if child == pid:
                return True
        return False

    for child, command in commands.items():
        if not descends(child):
            continue
        if "tansu" in command:
            roles["broker"] = child
        elif "redis-server" in command:
            roles["redis"] = child
        elif " consume " in f"{command} ":
            roles["consumer"] = child
    return roles


def soak(rate: float, minutes: float, interval: float, workdir: Path) -> tuple[list[Sample], dict[str, str]]:
    env_file = workdir / "dev.env"
    port = free_port()
    command = [
        sys.executable, "-m", "app", "dev",
        "--rate", str(rate), "--port", str(port), "--workdir", str(workdir), "--env-file", str(env_file),
    ]  # fmt: skip
    with (workdir / "dev.out").open("wb") as out:
        dev = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        while not env_file.exists():
            if dev.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"leadscore dev did not start: see {workdir / 'dev.out'}")
            time.sleep(0.5)
        settings = dict(
            line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
        )
        status_url = settings["LEADSCORE_DEV_CONSUMER_STATUS"]
        roles: dict[str, int | None] = dict(_children(dev.pid))
        samples: list[Sample] = []
        started = time.monotonic()
        previous = (started, _consumed(_get(f"{status_url}/metrics")[1].decode()))
        meter = CpuMeter(roles)
        while time.monotonic() - started < minutes * 60:
            time.sleep(interval)
            if dev.poll() is not None:
                raise RuntimeError(f"leadscore dev exited ({dev.returncode}): see {workdir / 'dev.out'}")
            now = time.monotonic()
            status, body = _get(f"{status_url}/readyz")
            readiness = json.loads(body)
            consumed = _consumed(_get(f"{status_url}/metrics")[1].decode())
            cpu = meter.shares()
            meter = CpuMeter(roles)  # the next interval's
            samples.append(
                Sample(
                    minute=round((now - started) / 60, 2),
                    lag=int(readiness.get("lag", -1)),
                    consumed=consumed,
                    consumed_per_second=round((consumed - previous[1]) / (now - previous[0]), 1),
                    ready=status == 200,
                    status=str(readiness.get("status")),
                    cpu_broker=round(cpu.get("broker", float("nan")), 3),
                    cpu_redis=round(cpu.get("redis", float("nan")), 3),
                    cpu_consumer=round(cpu.get("consumer", float("nan")), 3),
                )
            )
            previous = (now, consumed)
            print(json.dumps(asdict(samples[-1])), flush=True)
        return samples, settings
    finally:
        # SIGTERM stops `leadscore dev` as Ctrl-C does; SIGINT is ignored by a process started from a
        # background job of a non-interactive shell, which this script may well be.
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()


def markdown(rate: float, minutes: float, samples: list[Sample], machine: dict[str, object]) -> str:
    lags = [s.lag for s in samples]
    lines = [
        f"# `leadscore dev --rate {rate:g}` for {minutes:g} minutes",
        "",
        f"Run {now_iso()} on {machine.get('cpu_model', '?')} ({machine.get('nproc', '?')} cores)."
        " Lag = messages of the",
        "events topic not yet committed by the consumer (its /readyz); CPU in cores over each interval.",
        f"Lag: max {max(lags)}, last {lags[-1]}; consumer ready in {sum(s.ready for s in samples)} of"
        f" {len(samples)} samples.",
        "",
        "| minute | lag | consumed | events/s | ready | broker CPU | Redis CPU | consumer CPU |",
        "|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {s.minute:.1f} | {s.lag:,} | {s.consumed:,} | {s.consumed_per_second:,.0f} | {s.status} |"
        f" {s.cpu_broker:.2f} | {s.cpu_redis:.2f} | {s.cpu_consumer:.2f} |"
        for s in samples
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0, help="simulated events/s (leadscore dev --rate)")
    parser.add_argument("--minutes", type=float, default=15.0, help="how long to run")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=None, help="report path without suffix (default: results/)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="leadscore-soak-") as scratch:
        samples, _ = soak(args.rate, args.minutes, args.interval, Path(scratch))
    machine = machine_info({})
    out = args.out or RESULTS / f"soak-{args.rate:g}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown(args.rate, args.minutes, samples, machine))
    out.with_suffix(".json").write_text(
        json.dumps(
            {"rate": args.rate, "minutes": args.minutes, "machine": machine, "samples": [asdict(s) for s in samples]},
            indent=2,
        )
    )
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
