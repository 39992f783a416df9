"""The batch pipeline: fold a micro-batch of events into lead states, score, segment, store.

The middle is pure (`fold_batch`, `score_leads`); the two awaits are the store's one load and one
write per batch, whatever the batch size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.records import LeadRecord, event_id_hash
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
    applied: list[SourcedEvent]
    replayed: int  # at or below a lead's stored offset: applied before a restart
    duplicates: int  # an event id the lead applied recently (a producer retry)


@dataclass(slots=True)
class BatchOutcome:
    applied: list[SourcedEvent] = field(default_factory=list)
    replayed: int = 0
    duplicates: int = 0
    fenced: list[str] = field(default_factory=list)  # leads whose write a newer owner's state refused
    records: list[LeadRecord] = field(default_factory=list)
    transitions: list[SegmentTransition] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def fold_batch(
    stored: dict[str, LeadRecord], batch: Sequence[SourcedEvent], spec: FeatureSpec, dedupe_window: int
) -> FoldResult:
    """Apply each lead's new events (in partition order) to its stored state.

    Skips events at or below the lead's stored offset (already applied before a restart) and events
    whose id is among the lead's last `dedupe_window` applied ids (redelivered by a producer retry).
    """
    records: dict[str, LeadRecord] = {}
    pending: dict[str, list[Event]] = {}
    applied: list[SourcedEvent] = []
    replayed = duplicates = 0
    for item in batch:
        event = item.event
        record = records.get(event.lead_id)
        if record is None:
            before = stored.get(event.lead_id)
            if before is not None and before.already_applied(item.partition, item.offset):
                replayed += 1
                continue
            record = _copy_for_update(before, event.lead_id)
            records[event.lead_id] = record
            pending[event.lead_id] = []
        elif record.already_applied(item.partition, item.offset):
            replayed += 1
            continue
        # The fence moves past a duplicate too, so a replay of this batch skips it by offset.
        record.partition, record.offset = item.partition, item.offset
        id_hash = event_id_hash(event.event_id)
        if record.seen_event(id_hash):
            duplicates += 1
            continue
        record.remember_event(id_hash, dedupe_window)
        pending[event.lead_id].append(event)
        applied.append(item)
    for lead_id, events in pending.items():
        if events:
            records[lead_id].state = fold(records[lead_id].state, events, spec)
    return FoldResult(records, applied, replayed, duplicates)


def _copy_for_update(before: LeadRecord | None, lead_id: str) -> LeadRecord:
    if before is None:
        return LeadRecord(lead_id)
    return LeadRecord(
        lead_id=lead_id,
        state=before.state,  # `fold` copies before changing it
        partition=before.partition,
        offset=before.offset,
        score=before.score,
        segment=before.segment,
        model_version=before.model_version,
        scored_ms=before.scored_ms,
        recent_event_ids=before.recent_event_ids,
    )


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
        *,
        dedupe_window: int = 16,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.store = store
        self.scorer = scorer  # replaced in place when another model is activated
        self.spec = spec
        self.rules = rules
        self.clock_ms = clock_ms
        self.dedupe_window = dedupe_window

    async def process(self, batch: Sequence[SourcedEvent]) -> BatchOutcome:
        stages: dict[str, float] = {}
        started = time.perf_counter()
        lead_ids = list(dict.fromkeys(item.event.lead_id for item in batch))
        stored = await self.store.load_many(lead_ids)
        loaded = time.perf_counter()
        stages["load"] = loaded - started

        folded = fold_batch(stored, batch, self.spec, self.dedupe_window)
        records = list(folded.records.values())
        folded_at = time.perf_counter()
        stages["fold"] = folded_at - loaded

        transitions = score_leads(records, self.clock_ms(), self.scorer, self.spec, self.rules)
        scored = time.perf_counter()
        stages["score"] = scored - folded_at

        fenced = await self.store.save_batch(records)
        stages["write"] = time.perf_counter() - scored
        if fenced:
            refused = set(fenced)
            records = [r for r in records if r.lead_id not in refused]
            transitions = [t for t in transitions if t.lead_id not in refused]
        return BatchOutcome(
            applied=[i for i in folded.applied if i.event.lead_id not in set(fenced)],
            replayed=folded.replayed,
            duplicates=folded.duplicates,
            fenced=fenced,
            records=records,
            transitions=transitions,
            stage_seconds=stages,
        )
