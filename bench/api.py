"""API throughput and latency: wrk against /healthz and GET /leads/{id}, then a paced load at half the max rate.

Both endpoints are hit on the same one-worker `leadscore serve` process in the same run, so their ratio
says what reading and rendering a lead costs over the framework's own per-request cost.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

WRK_CONNECTIONS = 64
WRK_THREADS = 1  # one wrk thread drives a few thousand req/s easily and leaves the other core to the server
INSTALL_HINT = "install wrk (Debian/Ubuntu: apt-get install -y wrk; scripts/bench.sh does it when run as root)"

# Each wrk thread reads the lead ids once, then asks for a random one per request.
_LEADS_LUA = """\
local ids = {}
function init(args)
  for line in io.lines(os.getenv("BENCH_LEADS_FILE")) do ids[#ids + 1] = line end
  math.randomseed(os.time())
end
function request()
  return wrk.format("GET", "/leads/" .. ids[math.random(#ids)] .. "?reasons=false")
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str | None:
    binary = wrk_binary()
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else None


def write_leads_script(workdir: Path) -> Path:
    script = workdir / "leads.lua"
    script.write_text(_LEADS_LUA)
    return script


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles and error counts from `wrk --latency` output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rate is None:
        raise ValueError(f"wrk printed no Requests/sec:\n{output}")
    result: dict[str, Any] = {"rps": float(rate[1])}
    for q, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.MULTILINE):
        result[f"p{q}_ms"] = _ms(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non_2xx"] = int(non_2xx[1]) if non_2xx else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    result["socket_errors"] = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    requests = re.search(r"(\d+) requests in", output)
    result["requests"] = int(requests[1]) if requests else 0
    return result


def run_wrk(
    port: int, path: str, seconds: float, *, script: Path | None = None, leads_file: Path | None = None
) -> dict[str, Any]:
    binary = wrk_binary()
    if binary is None:
        raise FileNotFoundError(f"wrk not found: {INSTALL_HINT}")
    argv = [binary, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds:g}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(f"http://127.0.0.1:{port}{path}")
    env = {"BENCH_LEADS_FILE": str(leads_file)} if leads_file is not None else {}
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 30, env={**os.environ, **env}, check=True
    )
    return parse_wrk(out.stdout)


def run_loadgen(
    port: int,
    *,
    rate: float,
    seconds: float,
    connections: int,
    leads_file: Path | None = None,
    path: str = "/healthz",
    reasons: bool = False,
) -> dict[str, Any]:
    """bench.loadgen in its own process, so its CPU use does not share a GIL with anything else."""
    argv = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--rate", str(rate)]
    argv += ["--seconds", str(seconds), "--connections", str(connections)]
    argv += ["--leads-file", str(leads_file)] if leads_file is not None else ["--path", path]
    argv += ["--reasons"] if reasons else []
    out = subprocess.run(argv, capture_output=True, timeout=seconds + 60, check=True)
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def max_rate(port: int, seconds: float, *, leads_file: Path, script: Path) -> dict[str, dict[str, Any]]:
    """Saturated requests/s of /healthz and GET /leads/{id}, back to back on the same server."""
    if wrk_binary() is not None:
        return {
            "healthz": run_wrk(port, "/healthz", seconds),
            "leads": run_wrk(port, "/", seconds, script=script, leads_file=leads_file),
        }
    # Fallback: closed-loop Python client. It is slower than wrk, so the figures are lower bounds.
    healthz = run_loadgen(port, rate=0, seconds=seconds, connections=WRK_CONNECTIONS)
    leads = run_loadgen(port, rate=0, seconds=seconds, connections=WRK_CONNECTIONS, leads_file=leads_file)
    return {"healthz": _like_wrk(healthz), "leads": _like_wrk(leads)}


def _like_wrk(result: dict[str, Any]) -> dict[str, Any]:
    """A loadgen result with the figures `parse_wrk` gives (rate and error counts)."""
    non_2xx = sum(count for status, count in result["statuses"].items() if not 200 <= int(status) < 400)
    return {**result, "rps": result["achieved_rate"], "non_2xx": non_2xx, "socket_errors": result["errors"]}
