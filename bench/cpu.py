"""CPU time of the processes of a measurement, from /proc: who used the machine's cores during a window."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far; NaN where /proc cannot tell (not Linux, exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # the command name (2nd field) may hold spaces: count fields after its closing parenthesis
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


class CpuMeter:
    """Each named process's CPU time over a window, as a share of one core (1.0 = one core busy)."""

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid is not None}
        self.started = time.monotonic()
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def shares(self) -> dict[str, float]:
        elapsed = time.monotonic() - self.started
        return {
            name: (cpu_seconds(pid) - self.before[name]) / elapsed if elapsed > 0 else math.nan
            for name, pid in self.pids.items()
        }
