"""The batch pipeline: the fold (offset fence, duplicates, order), batch scoring against per-lead scoring, overlap."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import orjson
import pytest
from aiokafka import TopicPartition

from app.domain.batch import SourcedEvent, fold_batch, score_leads, segment_changes
from app.domain.lead import EVENT_ID_HASH_BYTES, LeadRecord
from app.domain.schedule import DuePlanner
from app.pipeline import BatchOutcome, ScoringPipeline
from app.settings import DEFAULT_MODEL_PATH, ServiceConfig, Settings
from app.storage.leads import LeadStore
from consumers.saver import BatchSaver
from models.scoring import Scorer, load_scorer
from models.spec import load_feature_spec
from models.state import DAY_MS, LeadState, fold
from models.vector import feature_values
from schemas.changes import SegmentChange
from schemas.events import Event
from tests.support import LeadFacts, RedisBackend, reference_segment

SPEC = load_feature_spec()
T0 = 1_790_000_000_000


@pytest.fixture(scope="module")
def config() -> ServiceConfig:
    return Settings().service_config


@pytest.fixture(scope="module")
def scorer(config: ServiceConfig) -> Scorer:
    return load_scorer(DEFAULT_MODEL_PATH, config.features)


def sourced(offset: int, lead: str = "L-1", event_id: str | None = None, partition: int = 0) -> SourcedEvent:
    event = Event(event_id=event_id or f"e{offset}", lead_id=lead, type="email_open", ts=T0 + offset)
    return SourcedEvent(event, partition, offset)


def test_events_at_or_below_the_stored_offset_are_replays() -> None:
    first = fold_batch({}, [sourced(0), sourced(1), sourced(2, "L-2")], SPEC, dedupe_window=16)
    assert [i.offset for i in first.applied] == [0, 1, 2]
    stored = first.records
    again = fold_batch(stored, [sourced(1), sourced(2, "L-2"), sourced(3)], SPEC, dedupe_window=16)
    assert again.replayed == 2
    assert [i.offset for i in again.applied] == [3]
    assert again.records["L-1"].state.counts == {"email_open": 3}
    assert again.records["L-1"].offset == 3
    assert "L-2" not in again.records  # nothing new for it: nothing to write


def test_a_redelivered_event_id_at_a_new_offset_is_applied_once() -> None:
    batch = [sourced(0, event_id="dup"), sourced(1, event_id="other"), sourced(2, event_id="dup")]
    result = fold_batch({}, batch, SPEC, dedupe_window=16)
    assert result.duplicates == 1
    assert result.records["L-1"].state.counts == {"email_open": 2}
    assert result.records["L-1"].offset == 2  # the fence moves past the duplicate too
    # across batches: the window travels with the stored record
    later = fold_batch(result.records, [sourced(3, event_id="dup")], SPEC, dedupe_window=16)
    assert later.duplicates == 1 and not later.applied


def test_the_duplicate_window_is_bounded() -> None:
    batch = [sourced(i, event_id=f"id{i}") for i in range(5)] + [sourced(5, event_id="id0")]
    small = fold_batch({}, batch, SPEC, dedupe_window=3)
    assert small.duplicates == 0  # id0 fell out of a 3-id window
    assert len(small.records["L-1"].recent_event_ids) == 3 * EVENT_ID_HASH_BYTES
    off = fold_batch({}, batch, SPEC, dedupe_window=0)
    assert off.duplicates == 0 and off.records["L-1"].recent_event_ids == b""


def test_stored_state_is_not_modified_in_place() -> None:
    stored = {"L-1": LeadRecord("L-1", state=fold(LeadState(), [sourced(0).event], SPEC), partition=0, offset=0)}
    before = dict(stored["L-1"].state.counts)
    fold_batch(stored, [sourced(1)], SPEC, dedupe_window=16)
    assert stored["L-1"].state.counts == before
    assert stored["L-1"].offset == 0


def test_an_owned_record_is_folded_in_place_to_the_same_record_as_a_copy() -> None:
    rng = random.Random(7)
    kinds = ["email_open", "email_click", "page_view", "form_fill", "demo_request"]

    def stored() -> dict[str, LeadRecord]:
        events = [sourced(n, lead=f"L-{n % 3}") for n in range(9)]
        return fold_batch({}, events, SPEC, dedupe_window=4).records

    batch = [
        SourcedEvent(
            Event(event_id=f"x{n}", lead_id=f"L-{n % 4}", type=rng.choice(kinds), ts=T0 - rng.randrange(10**9)),
            0,
            100 + n,
        )
        for n in range(40)
    ] + [sourced(9, lead="L-0")]  # a replay: at or below the stored offset
    copied_from, owned_from = stored(), stored()
    copied = fold_batch(copied_from, batch, SPEC, dedupe_window=4)
    owned = fold_batch(owned_from, batch, SPEC, dedupe_window=4, owned={"L-0", "L-1"})
    assert copied.records == owned.records and copied.replayed == owned.replayed == 1
    assert copied_from == stored()  # not owned: untouched
    assert owned_from["L-0"] is owned.records["L-0"] and owned_from["L-2"] == stored()["L-2"]


def test_another_partition_is_not_fenced_by_the_old_one() -> None:
    stored = fold_batch({}, [sourced(10, partition=0)], SPEC, dedupe_window=16).records
    moved = fold_batch(stored, [sourced(5, partition=3)], SPEC, dedupe_window=16)
    assert len(moved.applied) == 1 and moved.records["L-1"].partition == 3


def test_batch_scoring_equals_scoring_each_lead_alone(config: ServiceConfig, scorer: Scorer) -> None:
    """The vectorized stage (features, predict, segment rules, due times, change events) against the
    per-lead reference: feature_values, a one-row predict, the rules' reference reading and DuePlanner.next_due."""
    planner = DuePlanner(config.features, config.segments, staleness_ms=60_000, active_epsilon=0.05)
    rng = random.Random(5)
    types = ["email_send", "email_open", "email_click", "page_view", "demo_request", "form_fill", "converted"]
    sizes = ["1-10", "51-200", "5000+"]
    records = []
    for n in range(400):
        lead = f"L-{n}"
        events = [
            Event(event_id=f"{lead}-{i}", lead_id=lead, type=rng.choice(types), ts=T0 + rng.randrange(0, 40 * DAY_MS))
            for i in range(rng.randrange(1, 30))
        ]
        events.append(
            Event(
                event_id=f"{lead}-p",
                lead_id=lead,
                type="profile_update",
                ts=T0,
                properties={"company_size": rng.choice(sizes)},
            )
        )
        previous = {"tier": rng.choice(["hot", "warm", "cold"])} if n % 2 else {}
        records.append(LeadRecord(lead, fold(LeadState(), events, config.features), 0, n, segments=previous))
    at_ms = T0 + 41 * DAY_MS
    before = [dict(r.segments) for r in records]
    scoring = score_leads(records, at_ms, scorer, config.features, config.segments, planner)

    for record, previous in zip(records, before, strict=True):
        values = feature_values(record.state, at_ms, config.features)
        assert record.score == pytest.approx(float(scorer.predict(scorer.layout.encode([values]))[0]), abs=1e-12)
        facts = LeadFacts(record.score, values, record.state.profile, record.state.counts)
        assert record.segments == {
            name: reference_segment(rules, facts, previous.get(name)) for name, rules in config.segments.sets.items()
        }
        assert record.due_ms == planner.next_due(record.state, at_ms)
    moved = {
        (r.lead_id, s) for r, p in zip(records, before, strict=True) for s in r.segments if p.get(s) != r.segments[s]
    }
    assert {(t.lead_id, t.segment_set) for t in scoring.transitions} == moved

    for reasons in (0, 2):
        messages = segment_changes(scoring, records, "event", scorer, config.features, config.segments, reasons)
        assert len(messages) == len(scoring.transitions)
        changes = [SegmentChange.model_validate_json(value) for _, value in messages]
        assert [key.decode() for key, _ in messages] == [c.lead_id for c in changes]
        explained = [c for c in changes if c.reasons]
        assert bool(explained) == (reasons > 0)
        assert all(c.segment_set == "tier" and len(c.reasons) <= 2 * reasons for c in explained)
    again = segment_changes(scoring, records, "event", scorer, config.features, config.segments, 0)
    assert [orjson.loads(v)["change_id"] for _, v in again] == [c.change_id for c in changes]


async def process(pipeline: ScoringPipeline, events: Sequence[SourcedEvent]) -> BatchOutcome:
    """One batch at a time: prepare, then save."""
    return await pipeline.save(await pipeline.prepare(events))


class Commits:
    """Stands in for the consumer's offset commit (no broker here): records the offsets, in order."""

    def __init__(self) -> None:
        self.offsets: list[dict[TopicPartition, int]] = []
        self.outcomes: list[BatchOutcome] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.offsets.append(offsets)

    def saved(self, outcome: BatchOutcome, offsets: dict[TopicPartition, int]) -> None:
        self.outcomes.append(outcome)


def last_offsets(events: Sequence[SourcedEvent]) -> dict[TopicPartition, int]:
    return {TopicPartition("events", events[-1].partition): events[-1].offset + 1}


async def test_a_batch_prepared_before_the_previous_one_is_saved_builds_on_it(
    redis_backend: RedisBackend, config: ServiceConfig, scorer: Scorer
) -> None:
    """The consumer prepares batch N+1 while batch N is written: the result must equal running them in turn,
    and each batch's offsets are committed after its write, in order."""
    events = [sourced(i, f"L-{i % 7}") for i in range(60)]
    store = LeadStore.from_url(redis_backend.url, cluster=redis_backend.clustered)
    stop = asyncio.Event()
    try:
        await store.redis.flushdb()
        pipeline = ScoringPipeline(store, scorer, config.features, config.segments)
        commits = Commits()
        saver = BatchSaver(pipeline, commits.commit, commits.saved)
        first = await pipeline.prepare(events[:30], saver.held)
        await saver.save_after_previous(first, last_offsets(events[:30]), [], stop)
        # L-0..L-6 are all held by the first batch, whose write waits for the second's leads to be loaded
        second = await pipeline.prepare(events[30:], saver.held, between_stages=saver.between_stages)
        await saver.save_after_previous(second, last_offsets(events), [], stop)
        assert await saver.drain()
        assert commits.offsets == [last_offsets(events[:30]), last_offsets(events)]
        assert [len(outcome.applied) for outcome in commits.outcomes] == [30, 30]
        assert saver.held == {}, "saved batches hold nothing"
        overlapped = await store.load_many([f"L-{n}" for n in range(7)])

        await store.redis.flushdb()
        in_turn = ScoringPipeline(store, scorer, config.features, config.segments)
        await process(in_turn, events[:30])
        await process(in_turn, events[30:])
        sequential = await store.load_many([f"L-{n}" for n in range(7)])
        for n in range(7):
            lead = f"L-{n}"
            assert overlapped[lead].state == sequential[lead].state
            assert overlapped[lead].offset == sequential[lead].offset == max(i for i in range(60) if i % 7 == n)
            assert overlapped[lead].state.counts == {"email_open": sum(1 for i in range(60) if i % 7 == n)}
    finally:
        await store.close()


async def test_a_failed_commit_fails_the_next_batch(
    redis_backend: RedisBackend, config: ServiceConfig, scorer: Scorer
) -> None:
    store = LeadStore.from_url(redis_backend.url, cluster=redis_backend.clustered)
    stop = asyncio.Event()

    async def broker_refuses(offsets: dict[TopicPartition, int]) -> None:
        raise ConnectionError("coordinator unreachable")

    try:
        await store.redis.flushdb()
        pipeline = ScoringPipeline(store, scorer, config.features, config.segments)
        saver = BatchSaver(pipeline, broker_refuses, Commits().saved)
        first = [sourced(0, "L-x")]
        await saver.save_after_previous(await pipeline.prepare(first), last_offsets(first), [], stop)
        saver.allow_write()
        with pytest.raises(ConnectionError, match="coordinator unreachable"):
            for offset in range(1, 200):  # bounded: the failure shows by the batch after the commit ends
                later = [sourced(offset, "L-x")]
                await saver.save_after_previous(
                    await pipeline.prepare(later, saver.held), last_offsets(later), [], stop
                )
                saver.allow_write()
                await asyncio.sleep(0.005)
    finally:
        saver.abandon()
        await store.close()


async def test_a_failed_save_leaves_nothing_behind_for_a_retried_batch(
    redis_backend: RedisBackend, config: ServiceConfig, scorer: Scorer
) -> None:
    events = [sourced(i, "L-f") for i in range(3)]
    attempts = 0

    async def broker_down_once(changes: list[tuple[bytes, bytes]]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("broker unreachable")

    store = LeadStore.from_url(redis_backend.url, cluster=redis_backend.clustered)
    try:
        await store.redis.flushdb()
        pipeline = ScoringPipeline(store, scorer, config.features, config.segments, publish=broker_down_once)
        with pytest.raises(ConnectionError):
            await process(pipeline, events)
        assert await store.load_many(["L-f"]) == {}
        outcome = await process(pipeline, events)  # the retry starts from Redis, not from the failed attempt
        assert len(outcome.applied) == 3 and outcome.replayed == 0
        stored = (await store.load_many(["L-f"]))["L-f"]
        assert stored.state.counts == {"email_open": 3} and stored.offset == 2
    finally:
        await store.close()


class _GatedLoads(LeadStore):
    """The real store, whose loads wait for a gate: lets a test order a load against a concurrent save."""

    gate: asyncio.Event

    async def load_many(self, lead_ids: Sequence[str]) -> dict[str, LeadRecord]:
        await self.gate.wait()
        return await super().load_many(lead_ids)


async def test_the_previous_batch_finishing_its_save_during_a_load_loses_nothing(
    redis_backend: RedisBackend, config: ServiceConfig, scorer: Scorer
) -> None:
    events = [sourced(i, f"L-g{i % 3}") for i in range(12)]
    store = _GatedLoads.from_url(redis_backend.url, cluster=redis_backend.clustered)
    store.gate = asyncio.Event()
    store.gate.set()
    stop = asyncio.Event()
    try:
        await store.redis.flushdb()
        pipeline = ScoringPipeline(store, scorer, config.features, config.segments)
        commits = Commits()
        saver = BatchSaver(pipeline, commits.commit, commits.saved)
        first = await pipeline.prepare(events[:6], saver.held)
        await saver.save_after_previous(first, last_offsets(events[:6]), [], stop)
        store.gate.clear()
        preparing = asyncio.create_task(pipeline.prepare(events[6:], saver.held))  # its leads are all in `first`
        await asyncio.sleep(0)  # it has chosen what to load and waits at the gate
        saver.allow_write()
        assert await saver.drain()  # ... while the first batch is written and its leads are released
        assert saver.held == {}
        store.gate.set()
        second = await preparing
        await saver.save_after_previous(second, last_offsets(events), [], stop)
        assert await saver.drain()
        stored = await store.load_many([f"L-g{n}" for n in range(3)])
        assert {lead: r.state.counts["email_open"] for lead, r in stored.items()} == {f"L-g{n}": 4 for n in range(3)}
    finally:
        await store.close()


async def test_a_batch_write_waits_for_its_turn_and_a_load_goes_first(
    redis_backend: RedisBackend, config: ServiceConfig, scorer: Scorer
) -> None:
    store = LeadStore.from_url(redis_backend.url, cluster=redis_backend.clustered)
    stop = asyncio.Event()
    try:
        await store.redis.flushdb()
        pipeline = ScoringPipeline(store, scorer, config.features, config.segments)
        commits = Commits()
        saver = BatchSaver(pipeline, commits.commit, commits.saved)
        batch = [sourced(0, "L-t1"), sourced(1, "L-t2")]
        await saver.save_after_previous(await pipeline.prepare(batch, saver.held), last_offsets(batch), [], stop)
        turn = saver.turn
        assert turn is not None
        assert await asyncio.to_thread(turn.waiting.wait, 10), "the write never came to wait for its turn"
        # The writer is held: Redis has nothing yet, nothing is committed, and a load meanwhile is answered.
        assert await store.load_many(["L-t1", "L-t2"]) == {}
        assert commits.offsets == []

        second_batch = [sourced(2, "L-t1"), sourced(3, "L-t3")]
        second = await pipeline.prepare(second_batch, saver.held, between_stages=saver.between_stages)
        assert turn.allowed, "loading the next batch's leads gives the write its turn"
        loaded = [r.lead_id for r in second.records]
        await saver.save_after_previous(second, last_offsets(second_batch), [], stop)
        assert await saver.drain()
        assert [[r.lead_id for r in o.records] for o in commits.outcomes] == [["L-t1", "L-t2"], ["L-t1", "L-t3"]]
        stored = await store.load_many(["L-t1", "L-t2", "L-t3"])
        assert {lead: r.state.event_count for lead, r in stored.items()} == {"L-t1": 2, "L-t2": 1, "L-t3": 1}
        assert sorted(loaded) == ["L-t1", "L-t3"]
    finally:
        await store.close()


async def test_a_sweep_leaves_due_leads_of_an_unsaved_batch_to_it(
    redis_backend: RedisBackend, config: ServiceConfig, scorer: Scorer
) -> None:
    """The sweeper does not wait for the batch being saved: it rescores the other due leads, and those of
    that batch (about to be rewritten) are left to it, so no change is published from a state on its way out."""
    store = LeadStore.from_url(redis_backend.url, cluster=redis_backend.clustered)
    now = [T0 + 1000]
    planner = DuePlanner(config.features, config.segments, staleness_ms=60_000, active_epsilon=0.05)
    try:
        await store.redis.flushdb()
        pipeline = ScoringPipeline(
            store, scorer, config.features, config.segments, planner=planner, clock_ms=lambda: now[0]
        )
        await process(pipeline, [sourced(0, "L-s1"), sourced(1, "L-s2")])
        assert await store.due_count(0, now[0] + 3_600_000) == 2
        now[0] += 3_600_000  # both are due now
        pending = await pipeline.prepare([sourced(2, "L-s1")])  # L-s1 has a newer state, not written yet
        held = {record.lead_id: record for record in pending.records}

        swept = await pipeline.sweep(0, limit=100, held=held)
        assert [r.lead_id for r in swept.records] == ["L-s2"] and swept.deferred == 1
        assert all(t.lead_id == "L-s2" for t in swept.transitions)

        await pipeline.save(pending)
        stored = await store.load_many(["L-s1", "L-s2"])
        assert stored["L-s1"].state.event_count == 2 and stored["L-s1"].scored_ms == now[0]
        assert stored["L-s2"].scored_ms == now[0]  # rescored by the sweep
        assert (await pipeline.sweep(0, limit=100)).records == []  # nothing due any more
    finally:
        await store.close()
