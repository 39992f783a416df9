"""A batch's way through the service: load its leads, prepare them (the pure fold and scoring of
app.domain.batch), save them (publish their segment changes, then write them).

The awaits are the store's one load and one write per batch, and the segment-change publish before the write
(so a crash between the two repeats the changes, with the same change ids, rather than losing them). The
pipeline keeps no state between batches: what a consumer holds while a batch is being saved, and when its write
is sent, is the consumer's saver's business (consumers/saver.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.domain.batch import (
    ChangeMessage,
    FoldResult,
    SegmentTransition,
    SourcedEvent,
    fold_batch,
    history_entry,
    score_leads,
    segment_changes,
)
from app.domain.lead import LeadRecord
from app.domain.schedule import DuePlanner
from app.domain.segments import SegmentSets
from app.storage.leads import Activity, BatchWrite, ErasedState, Fence, LeadStore
from models.scoring import Scorer
from models.spec import FeatureSpec
from schemas.changes import LeadErased, Trigger
from schemas.events import ErasureRequest

PublishChanges = Callable[[list[ChangeMessage]], Awaitable[None]]
# A batch's latest segment changes go to the activity feed (the page's list of recent changes shows a few dozen).
CHANGES_PER_BATCH_IN_FEED = 20
SendWrite = Callable[[BatchWrite], Awaitable[list[str]]]


@dataclass(slots=True)
class BatchOutcome:
    applied: list[SourcedEvent] = field(default_factory=list)
    replayed: int = 0
    duplicates: int = 0
    invalid_values: dict[str, int] = field(default_factory=dict)  # by signal: see FoldResult
    fenced: list[str] = field(default_factory=list)  # leads whose write a newer state refused
    records: list[LeadRecord] = field(default_factory=list)
    transitions: list[SegmentTransition] = field(default_factory=list)
    changes: list[ChangeMessage] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    deferred: int = 0  # due leads a sweep left to the unsaved batch that holds them


@dataclass(frozen=True, slots=True)
class SourcedErasure:
    """An erasure request and its place among the lead's events (partition, offset)."""

    request: ErasureRequest
    partition: int
    offset: int


@dataclass(slots=True)
class PreparedBatch:
    """A batch folded and scored, with its change events, not yet published or written."""

    records: list[LeadRecord]
    transitions: list[SegmentTransition]
    changes: list[ChangeMessage]
    trigger: Trigger
    stages: dict[str, float]
    folded: FoldResult | None = None  # for events: what was applied, replayed or a duplicate


class ScoringPipeline:
    """Loads, prepares and saves batches of leads: for new events, for due leads (the sweeper), for a rescore."""

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

    async def prepare(
        self,
        batch: Sequence[SourcedEvent],
        held: Mapping[str, LeadRecord] | None = None,
        between_stages: Callable[[], Awaitable[None]] | None = None,
    ) -> PreparedBatch:
        """Load, fold and score a batch of events; `save` publishes and writes it.

        A lead in `held` (records of a batch prepared but not saved yet) is taken from there, not from Redis: a
        consumer prepares a batch while the one before it is still being written. `between_stages` is awaited
        after the load and after the fold (the consumer lets the previous batch's save go on meanwhile).
        """
        stages: dict[str, float] = {}
        started = time.perf_counter()
        lead_ids = list(dict.fromkeys(item.event.lead_id for item in batch))
        held = held or {}
        # Taken before the load: the batch being saved may finish (and release its leads) during it.
        unsaved = {lead: held[lead] for lead in lead_ids if lead in held}
        stored = await self.store.load_many([lead for lead in lead_ids if lead not in unsaved])
        owned = set(stored)  # decoded for this batch alone: folded in place
        stored.update(unsaved)
        loaded = time.perf_counter()
        stages["load"] = loaded - started
        if between_stages is not None:
            await between_stages()

        folded_at = time.perf_counter()
        folded = fold_batch(stored, batch, self.spec, self.dedupe_window, owned)
        stages["fold"] = time.perf_counter() - folded_at
        if between_stages is not None:
            await between_stages()
        prepared = self._score(list(folded.records.values()), Trigger.EVENT, stages)
        prepared.folded = folded
        return prepared

    async def sweep(self, partition: int, limit: int, held: Mapping[str, LeadRecord] | None = None) -> BatchOutcome:
        """Rescore the partition's leads whose due time has come (no new event: time moved their score).

        A due lead in `held` (a batch prepared but not saved yet) is left to that batch (`deferred`): its stored
        record is about to change, and rescoring the old one could publish a segment change that the newer state
        never makes. So the sweeper need not wait for the batch being saved.
        """
        stages: dict[str, float] = {}
        started = time.perf_counter()
        now_ms = self.clock_ms()
        due = await self.store.due_leads(partition, now_ms, limit)
        # Taken before the load, as in `prepare`: a lead held then may be written during it.
        deferred = {lead for lead in due if lead in (held or {})}
        wanted = [lead for lead in due if lead not in deferred]
        stored = await self.store.load_many(wanted)
        gone = [lead for lead in wanted if lead not in stored or stored[lead].partition != partition]
        await self.store.forget_due(partition, gone)
        records = [stored[lead] for lead in wanted if lead in stored and stored[lead].partition == partition]
        due_before: dict[str, int | None] = {r.lead_id: due[r.lead_id] for r in records}
        stages["load"] = time.perf_counter() - started
        outcome = await self.save(self._score(records, Trigger.TIME, stages, due_before))
        outcome.deferred = len(deferred)
        return outcome

    async def rescore(self, lead_ids: Sequence[str]) -> BatchOutcome:
        """Rescore stored leads with the current model (after an activation); no event is applied."""
        started = time.perf_counter()
        stored = await self.store.load_many(lead_ids)
        stages = {"load": time.perf_counter() - started}
        return await self.save(self._score(list(stored.values()), Trigger.RESCORE, stages))

    async def erase(self, erasures: Sequence[SourcedErasure]) -> list[ChangeMessage]:
        """Erase each lead as of its request's place among its events, then publish a LeadErased for each
        (acknowledged before this returns); returns the messages published.

        A lead whose record holds an event after the request (a newer owner of the partition went on past it) is
        left alone, but its LeadErased is published all the same: the erasure did happen there. Repeating a call
        that failed half-way erases nothing twice and publishes the same change ids.
        """
        messages: list[ChangeMessage] = []
        for erasure in erasures:
            request = erasure.request
            erased = await self.store.erase(request.lead_id, after=(erasure.partition, erasure.offset))
            segments = dict(request.segments)
            if erased.state is ErasedState.ERASED:
                segments.update(erased.segments)  # what the consumer wrote since the API's erasure, if anything
            change = LeadErased(
                change_id=request.erasure_id,
                lead_id=request.lead_id,
                segments=segments,
                requested_at=request.requested_at,
                at=datetime.fromtimestamp(self.clock_ms() / 1000, tz=UTC),
            )
            messages.append((request.lead_id.encode(), change.model_dump_json().encode()))
        if messages and self.publish is not None:
            await self.publish(messages)
        return messages

    def _score(
        self,
        records: list[LeadRecord],
        trigger: Trigger,
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

    async def save(self, prepared: PreparedBatch, send: SendWrite | None = None) -> BatchOutcome:
        """Publish the batch's segment changes (acknowledged first), then write its leads in one round trip, sent
        by `send` (default: from a thread at once; the consumer's saver chooses the moment).

        On an error nothing is lost: the batch stays prepared and `save` can be called again (the change
        ids are the same, and the offset fence makes a repeated write a no-op).
        """
        stages = dict(prepared.stages)
        started = time.perf_counter()
        if prepared.changes and self.publish is not None:
            await self.publish(prepared.changes)
        published = time.perf_counter()
        stages["publish"] = published - started
        # Events were applied: the stored offset must be older. A rescore without one: it must be unchanged.
        fence = Fence.NEWER_OFFSET if prepared.trigger is Trigger.EVENT else Fence.SAME_OFFSET
        applied = 0 if prepared.folded is None else len(prepared.folded.applied)
        latest = [value for _, value in prepared.changes[-CHANGES_PER_BATCH_IN_FEED:]]
        activity = Activity(applied, latest) if applied or latest else None
        write = await self.store.batch_write(prepared.records, fence, activity)
        fenced = await (send or _send_from_a_thread(self.store))(write)
        stages["write"] = time.perf_counter() - published
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
            outcome.invalid_values = prepared.folded.invalid_values
        return outcome


def _send_from_a_thread(store: LeadStore) -> SendWrite:
    async def send(write: BatchWrite) -> list[str]:
        return await asyncio.to_thread(store.send, write)

    return send
