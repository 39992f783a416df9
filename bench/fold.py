"""`python -m bench.fold [--events N] [--repeats R]`: the fold's own cost, µs per event, with the shipped config.

The benchmark workload's events (bench/workload.py, parsed once, not timed) are folded lead by lead into fresh
states, as the consumer folds a micro-batch; prints one JSON line with the median, min and max over repeats.
Run it in two checkouts in turn to compare a change of the fold side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict

from bench.workload import generate
from models.spec import load_feature_spec
from models.state import LeadState, fold
from schemas.events import Event


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fold", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="events folded per repeat")
    parser.add_argument("--leads", type=int, default=50_000, help="leads they are spread over")
    parser.add_argument("--repeats", type=int, default=7, help="repeats (median reported)")
    args = parser.parse_args(argv)
    spec = load_feature_spec()
    workload = generate(args.events, args.leads, seed=5, end_ms=1_790_000_000_000)
    by_lead: dict[str, list[Event]] = defaultdict(list)
    for _, value in workload.messages:
        event = Event.model_validate_json(value)
        by_lead[event.lead_id].append(event)
    groups = list(by_lead.values())
    per_event = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for events in groups:
            fold(LeadState(), events, spec)
        per_event.append((time.perf_counter() - started) / args.events * 1e6)
    print(
        json.dumps(
            {
                "fold_us_per_event_median": round(statistics.median(per_event), 3),
                "min": round(min(per_event), 3),
                "max": round(max(per_event), 3),
                "events": args.events,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
