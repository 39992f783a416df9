"""`python -m bench.fold [--events N] [--leads L] [--repeats R]`: the fold's own cost, µs per event, with the
shipped config, for the per-event fold (the consumer's) and the columnar one (bench/columnar_fold.py) side by side.

The workload's events (bench/workload.py, parsed once, not timed) are shuffled; the first half is folded into the
leads' stored states, and the second half is folded in micro-batches of 2,000 events onto copies of them, as the
consumer folds a batch: lead by lead with `fold_in_place`, or the whole batch at once with `fold_many`. The two
alternate within each repeat. With the default 50,000 leads a batch's events are nearly all for different leads (the
spread workload's shape); `--leads 2000` gives several events per lead per batch. Prints one JSON line with the
median, min and max over repeats of each, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from bench.columnar_fold import fold_many
from bench.stats import summary
from bench.workload import generate
from consumers.messages import parse_event
from models.spec import FeatureSpec, load_feature_spec
from models.state import LeadState, fold, fold_in_place
from schemas.events import EngagementEvent

BATCH_EVENTS = 2_000
FoldBatch = Callable[[list[LeadState], list[list[EngagementEvent]], FeatureSpec], None]


def per_event(states: list[LeadState], events: list[list[EngagementEvent]], spec: FeatureSpec) -> None:
    for state, lead_events in zip(states, events, strict=True):
        fold_in_place(state, lead_events, spec)


def _seconds(
    fold_batch: FoldBatch,
    batches: Sequence[Sequence[EngagementEvent]],
    stored: dict[str, LeadState],
    spec: FeatureSpec,
) -> float:
    """Seconds spent folding the batches (grouping them by lead and copying the stored states is not timed)."""
    total = 0.0
    for batch in batches:
        by_lead: dict[str, list[EngagementEvent]] = defaultdict(list)
        for event in batch:
            by_lead[event.lead_id].append(event)
        states = [stored[lead].copy() if lead in stored else LeadState() for lead in by_lead]
        started = time.perf_counter()
        fold_batch(states, list(by_lead.values()), spec)
        total += time.perf_counter() - started
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fold", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="events in the workload (half stored)")
    parser.add_argument("--leads", type=int, default=50_000, help="leads they are spread over")
    parser.add_argument("--repeats", type=int, default=5, help="repeats (median reported)")
    args = parser.parse_args(argv)
    spec = load_feature_spec()
    workload = generate(args.events, args.leads, seed=5, end_ms=1_790_000_000_000)
    events = [parse_event(value) for _, value in workload.messages]
    random.Random(5).shuffle(events)
    half = len(events) // 2
    history: dict[str, list[EngagementEvent]] = defaultdict(list)
    for event in events[:half]:
        history[event.lead_id].append(event)
    stored = {lead: fold(LeadState(), lead_events, spec) for lead, lead_events in history.items()}
    batches = [events[i : i + BATCH_EVENTS] for i in range(half, len(events), BATCH_EVENTS)]
    folded = len(events) - half
    micros: dict[str, list[float]] = {"per_event": [], "columnar": []}
    for _ in range(args.repeats):
        for name, fold_batch in (("per_event", per_event), ("columnar", fold_many)):
            micros[name].append(_seconds(fold_batch, batches, stored, spec) / folded * 1e6)
    report: dict[str, object] = {"events_folded": folded, "leads": args.leads, "batch_events": BATCH_EVENTS}
    figures = {name: summary(runs) for name, runs in micros.items()}
    for name, figure in figures.items():
        report[f"{name}_us_per_event_median"] = round(figure["median"], 3)
        report[f"{name}_min"], report[f"{name}_max"] = round(figure["min"], 3), round(figure["max"], 3)
    report["columnar_vs_per_event"] = round(figures["columnar"]["median"] / figures["per_event"]["median"], 3)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
