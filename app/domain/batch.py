"""What a micro-batch does to its leads, as pure functions: fold the new events into each lead's state (skipping
replays and duplicates), score and segment the leads in one batched step, plan when time is next due to move
them, and describe each segment change as the message subscribers receive."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson

from app.domain.lead import LeadRecord, event_id_hash
from app.domain.schedule import DuePlanner
from app.domain.segments import Column, SegmentSets
from models.explain import explain
from models.scoring import Scorer
from models.spec import FeatureSpec
from models.state import fold, fold_in_place
from models.vector import FeatureBatch, FeatureValue
from schemas.changes import Trigger, segment_change_json
from schemas.events import EngagementEvent

# A segment-change event as sent: (lead id, schemas.changes.SegmentChange JSON).
ChangeMessage = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class SourcedEvent:
    """A valid event and where it came from (the partition offset is the exactly-once fence)."""

    event: EngagementEvent
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
class FoldResult:
    records: dict[str, LeadRecord]  # only leads with at least one newly applied event
    applied: list[SourcedEvent]
    replayed: int  # at or below a lead's stored offset: applied before a restart
    duplicates: int  # an event id the lead applied recently (a producer retry)
    # Events whose numeric property a signal reads was missing or not a number, by signal (skipped by the fold).
    invalid_values: dict[str, int] = field(default_factory=dict)


def fold_batch(
    stored: dict[str, LeadRecord],
    batch: Sequence[SourcedEvent],
    spec: FeatureSpec,
    dedupe_window: int,
    owned: Set[str] = frozenset(),
) -> FoldResult:
    """Apply each lead's new events (in partition order) to its stored state.

    Skips events at or below the lead's stored offset (already applied before a restart) and events
    whose id is among the lead's last `dedupe_window` applied ids (redelivered by a producer retry).
    A stored record is left untouched, except those of the leads in `owned` (records the caller just decoded
    and nobody else holds), which are updated in place: a copy per lead is a tenth of the fold's cost.
    """
    records: dict[str, LeadRecord] = {}
    pending: dict[str, list[EngagementEvent]] = {}
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
            if before is not None and event.lead_id in owned:
                record = before
            else:
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
    invalid_values: Counter[str] = Counter()
    for lead_id, events in pending.items():
        if events:
            record = records[lead_id]
            counted = dict(record.state.invalid_values)
            if lead_id in owned or lead_id not in stored:  # a new lead's record is this batch's own
                fold_in_place(record.state, events, spec)
            else:
                record.state = fold(record.state, events, spec)
            for signal, count in record.state.invalid_values.items():
                invalid_values[signal] += count - counted.get(signal, 0)
    return FoldResult(records, applied, replayed, duplicates, {s: n for s, n in invalid_values.items() if n})


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


def change_id(transition: SegmentTransition, record: LeadRecord, trigger: Trigger, due_ms: int | None) -> str:
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
    trigger: Trigger,
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
        change = segment_change_json(
            change_id=change_id(transition, record, trigger, (due_before or {}).get(record.lead_id)),
            lead_id=record.lead_id,
            segment_set=transition.segment_set,
            from_segment=transition.previous,
            to_segment=transition.current,
            score=record.score or 0.0,
            at=datetime.fromtimestamp(record.scored_ms / 1000, tz=UTC),
            model_version=record.model_version or "",
            trigger=trigger,
            reasons=explained.get(record.lead_id, []) if _worth_explaining(transition, segments) else [],
        )
        messages.append((record.lead_id.encode(), change))
    return messages


def history_entry(
    before: tuple[float | None, dict[str, str], str | None], record: LeadRecord, trigger: Trigger, min_delta: float
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
