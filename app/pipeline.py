"""The batch pipeline: fold a micro-batch of events into lead states, score, segment, store.

The middle is pure (`fold_batch`, `score_leads`); the two awaits are the store's one load and one
write per batch, whatever the batch size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.records import LeadRecord
from app.segments import LeadFacts, SegmentRules
from app.store import LeadStore
from models.scoring import Scorer
from models.spec import FeatureSpec
from models.state import fold
from models.vector import feature_values
from schemas.events import Event


@dataclass(frozen=True, slots=True)
class SourcedEvent:
    """A valid event and where it came from (the partition offset is the exactly-once fence)."""

    event: Event
    partition: int
    offset: int
    received_ms: int = 0  # broker timestamp: start of the event-to-scored latency


@dataclass(frozen=True, slots=True)
class SegmentTransition:
    lead_id: str
    previous: str | None
    current: str


@dataclass(slots=True)
class FoldResult:
    records: dict[str, LeadRecord]  # only leads with at least one newly applied event
    previous_segments: dict[str, str | None]
    applied: list[SourcedEvent]
    skipped: int  # at or below a lead's stored offset: applied before a restart


@dataclass(slots=True)
class BatchOutcome:
    applied: list[SourcedEvent] = field(default_factory=list)
    skipped: int = 0
    records: list[LeadRecord] = field(default_factory=list)
    transitions: list[SegmentTransition] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def fold_batch(stored: dict[str, LeadRecord], batch: Sequence[SourcedEvent], spec: FeatureSpec) -> FoldResult:
    """Apply each lead's new events (in partition order) to its stored state; skip what was applied."""
    pending: dict[str, list[SourcedEvent]] = {}
    skipped = 0
    for item in batch:
        lead_id = item.event.lead_id
        record = stored.get(lead_id)
        if record is not None and record.already_applied(item.partition, item.offset):
            skipped += 1
            continue
        pending.setdefault(lead_id, []).append(item)

    records: dict[str, LeadRecord] = {}
    previous_segments: dict[str, str | None] = {}
    applied: list[SourcedEvent] = []
    for lead_id, items in pending.items():
        before = stored.get(lead_id) or LeadRecord(lead_id)
        last = items[-1]
        records[lead_id] = LeadRecord(
            lead_id=lead_id,
            state=fold(before.state, (i.event for i in items), spec),
            partition=last.partition,
            offset=last.offset,
            score=before.score,
            segment=before.segment,
            model_version=before.model_version,
            scored_ms=before.scored_ms,
        )
        previous_segments[lead_id] = before.segment
        applied.extend(items)
    return FoldResult(records, previous_segments, applied, skipped)


def score_leads(
    records: Sequence[LeadRecord], at_ms: int, scorer: Scorer, spec: FeatureSpec, rules: SegmentRules
) -> list[SegmentTransition]:
    """Score records as of `at_ms` with one batched predict, assign segments; returns segment changes."""
    if not records:
        return []
    values = [feature_values(r.state, at_ms, spec) for r in records]
    scores = scorer.predict(scorer.layout.encode(values))
    transitions = []
    for record, features, score in zip(records, values, scores, strict=True):
        previous = record.segment
        record.score = float(score)
        record.model_version = scorer.version
        record.scored_ms = at_ms
        record.segment = rules.assign(LeadFacts(record.score, features, record.state.profile, record.state.counts))
        if record.segment != previous:
            transitions.append(SegmentTransition(record.lead_id, previous, record.segment))
    return transitions


class ScoringPipeline:
    def __init__(
        self,
        store: LeadStore,
        scorer: Scorer,
        spec: FeatureSpec,
        rules: SegmentRules,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.store = store
        self.scorer = scorer  # replaced in place when another model is activated
        self.spec = spec
        self.rules = rules
        self.clock_ms = clock_ms

    async def process(self, batch: Sequence[SourcedEvent]) -> BatchOutcome:
        stages: dict[str, float] = {}
        started = time.perf_counter()
        lead_ids = list(dict.fromkeys(item.event.lead_id for item in batch))
        stored = await self.store.load_many(lead_ids)
        loaded = time.perf_counter()
        stages["load"] = loaded - started

        folded = fold_batch(stored, batch, self.spec)
        records = list(folded.records.values())
        folded_at = time.perf_counter()
        stages["fold"] = folded_at - loaded

        transitions = score_leads(records, self.clock_ms(), self.scorer, self.spec, self.rules)
        scored = time.perf_counter()
        stages["score"] = scored - folded_at

        await self.store.save_batch(records, folded.previous_segments)
        stages["write"] = time.perf_counter() - scored
        return BatchOutcome(folded.applied, folded.skipped, records, transitions, stages)
