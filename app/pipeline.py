"""The batch pipeline: fold a micro-batch of events into lead states, score, segment, publish, store.

The middle is pure (`fold_batch`, `score_leads`, `segment_changes`); the awaits are the store's one
load and one write per batch, and the segment-change publish before the write (so a crash between the
two repeats the changes, with the same change ids, rather than losing them).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson

from app.due import DuePlanner
from app.records import LeadRecord, event_id_hash
from app.segments import Column, SegmentSets
from app.store import LeadStore, WriteTurn
from models.explain import explain
from models.scoring import Scorer
from models.spec import FeatureSpec
from models.state import fold
from models.vector import FeatureBatch, FeatureValue
from schemas.events import Event

# A segment-change event as sent: (lead id, schemas.changes.SegmentChange JSON).
ChangeMessage = tuple[bytes, bytes]
PublishChanges = Callable[[list[ChangeMessage]], Awaitable[None]]


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
    segment_set: str
    previous: str | None
    current: str


@dataclass(slots=True)
class BatchOutcome:
    applied: list[SourcedEvent] = field(default_factory=list)
    replayed: int = 0
    duplicates: int = 0
    fenced: list[str] = field(default_factory=list)  # leads whose write a newer state refused
    records: list[LeadRecord] = field(default_factory=list)
    transitions: list[SegmentTransition] = field(default_factory=list)
    changes: list[ChangeMessage] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    deferred: int = 0  # due leads a sweep left to the unsaved batch that holds them


@dataclass(slots=True)
class PreparedBatch:
    """A batch folded and scored, with its change events, not yet published or written."""

    records: list[LeadRecord]
    transitions: list[SegmentTransition]
    changes: list[ChangeMessage]
    trigger: str  # event, time (the sweeper) or rescore
    stages: dict[str, float]
    folded: FoldResult | None = None  # for events: what was applied, replayed or a duplicate


@dataclass(slots=True)
class FoldResult:
    records: dict[str, LeadRecord]  # only leads with at least one newly applied event
    applied: list[SourcedEvent]
    replayed: int  # at or below a lead's stored offset: applied before a restart
    duplicates: int  # an event id the lead applied recently (a producer retry)


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
        segments=before.segments,
        model_version=before.model_version,
        scored_ms=before.scored_ms,
        recent_event_ids=before.recent_event_ids,
    )


@dataclass(slots=True)
class Scoring:
    """What scoring a set of leads produced: their features (as of the scoring time) and segment moves."""

    features: FeatureBatch
    transitions: list[SegmentTransition]


def rule_columns(features: FeatureBatch, scores: np.ndarray, records: Sequence[LeadRecord]) -> Column:
    """The columns segment rules read, by field: score, feature.<name>, profile.<attribute>, count.<type>."""
    n = len(records)

    def column(field: str) -> np.ndarray:
        if field == "score":
            return scores
        namespace, _, name = field.partition(".")
        if namespace == "feature":
            return features.column(name) if name in features.names else np.full(n, np.nan)
        if namespace == "profile":
            return np.array([r.state.profile.get(name) for r in records], dtype=object)
        return np.fromiter((r.state.counts.get(name, 0) for r in records), dtype=np.float64, count=n)

    return column


def score_leads(
    records: Sequence[LeadRecord],
    at_ms: int,
    scorer: Scorer,
    spec: FeatureSpec,
    segments: SegmentSets,
    planner: DuePlanner | None = None,
) -> Scoring:
    """Score records as of `at_ms` with one batched predict, assign every segment set, plan the next rescore.

    Features, segment rules and due times are computed column by column over the whole batch.
    """
    features = FeatureBatch.of([r.state for r in records], at_ms, spec)
    if not records:
        return Scoring(features, [])
    scores = scorer.predict(features.model_input(scorer.layout))
    if spec.exit_types:
        # A lead that exited can no longer convert: 0, whatever its features say (the model never saw such rows).
        exited = np.fromiter((r.state.exited_ms > 0 for r in records), dtype=bool, count=len(records))
        scores = np.where(exited, 0.0, scores)
    assigned = segments.assign_batch(
        rule_columns(features, scores, records), len(records), [r.segments for r in records]
    )
    due = planner.next_due_batch(features) if planner else [None] * len(records)
    transitions: list[SegmentTransition] = []
    by_lead = zip(*assigned.values(), strict=True)
    for record, score, lead_segments, due_ms in zip(records, scores.tolist(), by_lead, due, strict=True):
        previous = record.segments
        record.score = score
        record.model_version = scorer.version
        record.scored_ms = at_ms
        record.segments = dict(zip(assigned, lead_segments, strict=True))
        record.due_ms = due_ms
        if record.segments != previous:
            transitions.extend(
                SegmentTransition(record.lead_id, name, previous.get(name), current)
                for name, current in record.segments.items()
                if previous.get(name) != current
            )
    return Scoring(features, transitions)


def change_id(transition: SegmentTransition, record: LeadRecord, trigger: str, due_ms: int | None) -> str:
    """The same transition of the same lead state gets the same id, however often it is repeated."""
    key = (
        f"{transition.lead_id}|{transition.segment_set}|{transition.previous}|{transition.current}|"
        f"{record.partition}|{record.offset}|{trigger}|{due_ms or 0}|{record.model_version}"
    )
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _worth_explaining(transition: SegmentTransition, segments: SegmentSets) -> bool:
    rules = segments[transition.segment_set]
    return rules.uses_score and not (transition.previous is None and transition.current == rules.fallback)


def segment_changes(
    scoring: Scoring,
    records: Sequence[LeadRecord],
    trigger: str,
    scorer: Scorer,
    spec: FeatureSpec,
    segments: SegmentSets,
    reasons: int,
    due_before: dict[str, int | None] | None = None,
) -> list[ChangeMessage]:
    """Change events (schemas.changes.SegmentChange as JSON, keyed by lead) for the transitions.

    With `reasons` > 0 a change in a score-driven segment set carries the top reasons. TreeSHAP costs
    ~350 µs a lead, so that is off by default: reasons are computed where they are read (the API), and
    the benchmark measures the cost of turning them on here. A `fit` change is explained by its own rule,
    and a new lead's first placement in the catch-all segment says nothing, so neither is explained.
    """
    if not scoring.transitions:
        return []
    index = {record.lead_id: i for i, record in enumerate(records)}
    explained: dict[str, list[dict[str, FeatureValue]]] = {}
    if reasons:
        changed = list(dict.fromkeys(t.lead_id for t in scoring.transitions if _worth_explaining(t, segments)))
        names = scoring.features.names
        values = [dict(zip(names, scoring.features.row(index[lead]), strict=True)) for lead in changed]
        for lead, explanation in zip(changed, explain(scorer, values, spec, reasons), strict=True):
            explained[lead] = [
                {"feature": r.feature, "value": r.value, "contribution": r.contribution, "sentence": r.sentence}
                for r in explanation.reasons
            ]
    messages = []
    for transition in scoring.transitions:
        record = records[index[transition.lead_id]]
        change = {
            "change_id": change_id(transition, record, trigger, (due_before or {}).get(record.lead_id)),
            "lead_id": record.lead_id,
            "segment_set": transition.segment_set,
            "from_segment": transition.previous,
            "to_segment": transition.current,
            "score": record.score or 0.0,
            "at": datetime.fromtimestamp(record.scored_ms / 1000, tz=UTC),
            "model_version": record.model_version or "",
            "trigger": trigger,
            "reasons": explained.get(record.lead_id, []) if _worth_explaining(transition, segments) else [],
        }
        messages.append((record.lead_id.encode(), orjson.dumps(change, option=orjson.OPT_UTC_Z)))
    return messages


def history_entry(
    before: tuple[float | None, dict[str, str], str | None], record: LeadRecord, trigger: str, min_delta: float
) -> bytes | None:
    """A score-history entry when something a user would notice changed: segments, model, or the score."""
    score, segments, model_version = before
    moved = score is None or record.score is None or abs(record.score - score) >= min_delta
    if not (moved or segments != record.segments or model_version != record.model_version):
        return None
    return orjson.dumps(
        {
            "at": record.scored_ms,
            "score": record.score,
            "segments": record.segments,
            "model_version": record.model_version,
            "trigger": trigger,
        }
    )


class ScoringPipeline:
    def __init__(
        self,
        store: LeadStore,
        scorer: Scorer,
        spec: FeatureSpec,
        segments: SegmentSets,
        *,
        planner: DuePlanner | None = None,
        publish: PublishChanges | None = None,
        change_reasons: int = 0,
        dedupe_window: int = 8,
        history_min_delta: float = 0.01,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.store = store
        self.scorer = scorer  # replaced in place when another model is activated
        self.spec = spec
        self.segments = segments
        self.planner = planner
        self.publish = publish
        self.change_reasons = change_reasons
        self.dedupe_window = dedupe_window
        self.history_min_delta = history_min_delta
        self.clock_ms = clock_ms
        # Records of prepared batches not saved yet, by lead: the newest state of those leads.
        self._unsaved: dict[str, LeadRecord] = {}

    async def process(self, batch: Sequence[SourcedEvent]) -> BatchOutcome:
        """Apply a batch of events: load, fold, score, publish segment changes, write."""
        prepared = await self.prepare(batch)
        try:
            return await self.save(prepared)
        except BaseException:
            self._forget(prepared)  # a retried `process` starts again from what Redis holds
            raise

    async def prepare(
        self, batch: Sequence[SourcedEvent], between_stages: Callable[[], Awaitable[None]] | None = None
    ) -> PreparedBatch:
        """Load, fold and score a batch of events; `save` publishes and writes it. `between_stages` is
        awaited after the load and after the fold (the consumer lets the previous batch's save go on).

        A lead whose previous batch is prepared but not saved yet is taken from that batch, not from
        Redis, so the consumer can prepare a batch while the one before it is still being written.
        """
        stages: dict[str, float] = {}
        started = time.perf_counter()
        lead_ids = list(dict.fromkeys(item.event.lead_id for item in batch))
        # Taken before the load: the batch being saved may finish (and leave `_unsaved`) during it.
        unsaved = {lead: self._unsaved[lead] for lead in lead_ids if lead in self._unsaved}
        stored = await self.store.load_many([lead for lead in lead_ids if lead not in unsaved])
        stored.update(unsaved)
        loaded = time.perf_counter()
        stages["load"] = loaded - started
        if between_stages is not None:
            await between_stages()

        folded_at = time.perf_counter()
        folded = fold_batch(stored, batch, self.spec, self.dedupe_window)
        stages["fold"] = time.perf_counter() - folded_at
        if between_stages is not None:
            await between_stages()
        prepared = self._score(list(folded.records.values()), "event", stages)
        prepared.folded = folded
        self._unsaved.update((record.lead_id, record) for record in prepared.records)
        return prepared

    async def sweep(self, partition: int, limit: int) -> BatchOutcome:
        """Rescore the partition's leads whose due time has come (no new event: time moved their score).

        A due lead of a batch prepared but not saved yet is left to that batch (`deferred`): its stored
        record is about to change, and rescoring the old one could publish a segment change that the
        newer state never makes. So the sweeper need not wait for the batch being saved.
        """
        stages: dict[str, float] = {}
        started = time.perf_counter()
        now_ms = self.clock_ms()
        due = await self.store.due_leads(partition, now_ms, limit)
        # Taken before the load, as in `prepare`: a lead still unsaved then may be written during it.
        deferred = {lead for lead in due if lead in self._unsaved}
        wanted = [lead for lead in due if lead not in deferred]
        stored = await self.store.load_many(wanted)
        gone = [lead for lead in wanted if lead not in stored or stored[lead].partition != partition]
        await self.store.forget_due(partition, gone)
        records = [stored[lead] for lead in wanted if lead in stored and stored[lead].partition == partition]
        due_before: dict[str, int | None] = {r.lead_id: due[r.lead_id] for r in records}
        stages["load"] = time.perf_counter() - started
        outcome = await self.save(self._score(records, "time", stages, due_before))
        outcome.deferred = len(deferred)
        return outcome

    async def rescore(self, lead_ids: Sequence[str]) -> BatchOutcome:
        """Rescore stored leads with the current model (after an activation); no event is applied."""
        started = time.perf_counter()
        stored = await self.store.load_many(lead_ids)
        stages = {"load": time.perf_counter() - started}
        return await self.save(self._score(list(stored.values()), "rescore", stages))

    def _score(
        self,
        records: list[LeadRecord],
        trigger: str,
        stages: dict[str, float],
        due_before: dict[str, int | None] | None = None,
    ) -> PreparedBatch:
        scoring_started = time.perf_counter()
        before = {r.lead_id: (r.score, r.segments, r.model_version) for r in records}
        scoring = score_leads(records, self.clock_ms(), self.scorer, self.spec, self.segments, self.planner)
        for record in records:
            record.history_entry = history_entry(before[record.lead_id], record, trigger, self.history_min_delta)
        changes = (
            segment_changes(
                scoring, records, trigger, self.scorer, self.spec, self.segments, self.change_reasons, due_before
            )
            if self.publish
            else []
        )
        stages["score"] = time.perf_counter() - scoring_started
        return PreparedBatch(records, scoring.transitions, changes, trigger, stages)

    def _forget(self, prepared: PreparedBatch) -> None:
        """Its leads are saved (or given up): later batches read them from Redis again, unless a newer
        prepared batch holds them."""
        unsaved = self._unsaved
        for record in prepared.records:
            if unsaved.get(record.lead_id) is record:
                del unsaved[record.lead_id]

    async def save(self, prepared: PreparedBatch, write_turn: WriteTurn | None = None) -> BatchOutcome:
        """Publish the batch's segment changes (acknowledged first), then write its leads in one round trip
        (once `write_turn` is set, if given: see LeadStore.save_batch).

        On an error nothing is lost: the batch stays prepared and `save` can be called again (the change
        ids are the same, and the offset fence makes a repeated write a no-op).
        """
        stages = dict(prepared.stages)
        started = time.perf_counter()
        if prepared.changes and self.publish is not None:
            await self.publish(prepared.changes)
        published = time.perf_counter()
        stages["publish"] = published - started
        fenced = await self.store.save_batch(prepared.records, sweep=prepared.trigger != "event", turn=write_turn)
        stages["write"] = time.perf_counter() - published
        self._forget(prepared)
        refused = set(fenced)
        outcome = BatchOutcome(
            fenced=fenced,
            records=[r for r in prepared.records if r.lead_id not in refused],
            transitions=[t for t in prepared.transitions if t.lead_id not in refused],
            changes=prepared.changes,
            stage_seconds=stages,
        )
        if prepared.folded is not None:
            outcome.applied = [i for i in prepared.folded.applied if i.event.lead_id not in refused]
            outcome.replayed, outcome.duplicates = prepared.folded.replayed, prepared.folded.duplicates
        return outcome
