"""Saving a batch while the next one is prepared: the one place that decides when the consumer's writes and
commits happen.

A batch goes through these steps, in this order; the guarantees follow from the order:

  1. prepare (ConsumerWorker.handle, app.pipeline): load the batch's leads with one MGET, fold and score them.
     A lead held by the batch still being saved is taken from that batch, not from Redis (snapshotted before
     the load, so that batch's save finishing meanwhile cannot hide it).
  2. wait until the previous batch is saved. If it was given up (the worker stops while Redis is down), give
     this one up too: committing its offsets would cover the unsaved one before it; both are redelivered.
  3. hold its leads (for the next batch's step 1) and save it in the background:
     a. publish its segment changes and wait for the broker's acknowledgements: a crash after this and
        before the write repeats them, with the same change ids (at least once);
     b. write its records, segment sets, due entries and history with one script call, which refuses a lead
        whose stored offset is already at or past the write's (a zombie after a rebalance). The write is sent
        from a thread once the next batch's leads are loaded, or when no next batch is waiting: Redis runs
        one script at a time, and a load queued behind a 2,000-lead write would wait ~40 ms with the consumer
        idle; from a thread it goes out while the next batch is folded and scored;
     c. release its leads: later batches read them from Redis;
     d. wait for its dead letters' acknowledgements;
     e. commit offset + 1 of its last message per partition: only after the write, so a crash anywhere
        before the commit redelivers the batch and the offset fence makes the replay a no-op for leads
        already written (exactly-once effect on Redis).
  Meanwhile step 1 runs for the next batch, giving the save a few event-loop turns between its stages and
  every PARSE_CHUNK parsed messages, so the save's round trips overlap with the consumer's own CPU work.

One batch is saved at a time, in order. A rebalance first waits for the save in flight (drain), and the sweeper,
which runs between batches, leaves the leads held here to the batch that holds them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from app import metrics
from app.domain.lead import LeadRecord
from app.pipeline import BatchOutcome, PreparedBatch, ScoringPipeline
from app.storage.leads import BatchWrite
from consumers.retry import until_redis_answers

log = logging.getLogger(__name__)

# Between stages of preparing a batch, the save of the previous one gets this many event-loop turns (a few µs
# each): each moves it one step (an acknowledgement read, records encoded, the write sent, the commit). Chosen
# with the pipeline benchmark (bench/, `--only pipeline`) when the overlap was built (2026-11-22): the save
# then finished within the next batch's preparation (the `wait` stage fell from 19 to 7 µs/event).
SAVE_TURNS = 8
PARSE_CHUNK = 500  # messages parsed between such turns
# A write waiting for its turn goes ahead after this long whatever happens (a safety bound).
WRITE_TURN_TIMEOUT_SECONDS = 5.0


class WriteTurn:
    """When a batch's write may be sent: `allow` from the event loop; the writing thread waits for it."""

    def __init__(self) -> None:
        self._go = threading.Event()
        self.waiting = threading.Event()  # set once a writer waits for the turn (what a test can see)

    def allow(self) -> None:
        self._go.set()

    @property
    def allowed(self) -> bool:
        return self._go.is_set()

    def wait(self) -> None:
        self.waiting.set()
        self._go.wait(WRITE_TURN_TIMEOUT_SECONDS)


class BatchSaver:
    """Saves prepared batches one at a time, in order, in the background (steps 2-3 above)."""

    def __init__(
        self,
        pipeline: ScoringPipeline,
        commit: Callable[[dict[TopicPartition, int]], Awaitable[None]],
        saved: Callable[[BatchOutcome, dict[TopicPartition, int]], None],
    ) -> None:
        self.pipeline = pipeline
        self.commit = commit  # the consumer's offset commit
        self.saved = saved  # told of each batch committed, with its offsets
        # Records of batches prepared and not yet written, by lead: the newest state of those leads.
        self.held: dict[str, LeadRecord] = {}
        self._saving: asyncio.Task[bool] | None = None
        self._turn: WriteTurn | None = None

    async def save_after_previous(
        self,
        prepared: PreparedBatch,
        offsets: dict[TopicPartition, int],
        dead_letters: list[asyncio.Future[object]],
        stop: asyncio.Event,
    ) -> None:
        """Steps 2 and 3: once the previous batch is saved, start saving this one."""
        waiting = time.perf_counter()
        previous_saved = await self.drain()
        metrics.BATCH_STAGE_SECONDS.labels("wait").observe(time.perf_counter() - waiting)
        if not previous_saved:
            return
        self.held.update((record.lead_id, record) for record in prepared.records)
        self._turn = WriteTurn()
        self._saving = asyncio.create_task(self._save(prepared, offsets, dead_letters, stop, self._turn))

    @property
    def turn(self) -> WriteTurn | None:
        """The write turn of the batch being saved (None before the first)."""
        return self._turn

    def allow_write(self) -> None:
        """The batch being saved may send its write now (the next batch's leads are loaded, or none waits)."""
        if self._turn is not None:
            self._turn.allow()

    async def between_stages(self) -> None:
        """Between the stages of preparing a batch (its leads are loaded by then): the previous batch may write,
        and its save gets some turns."""
        self.allow_write()
        await self.give_turns()

    async def give_turns(self) -> float:
        """A few event-loop turns for the save in flight; returns the seconds they took (its work, not ours)."""
        started = time.perf_counter()
        saving = self._saving
        for _ in range(SAVE_TURNS):
            if saving is None or saving.done():
                break
            await asyncio.sleep(0)
        return time.perf_counter() - started

    async def drain(self) -> bool:
        """Wait until the batch being saved is written and committed (its failure is raised here); False if it
        was given up because the worker is stopping while Redis is down."""
        self.allow_write()
        saving, self._saving = self._saving, None
        return True if saving is None else await saving

    def abandon(self) -> None:
        """Failing out: the save in flight is cancelled; nothing more is committed, the batch is redelivered."""
        if self._saving is not None and not self._saving.done():
            self.allow_write()  # its thread must not wait out its turn
            self._saving.cancel()

    async def _save(
        self,
        prepared: PreparedBatch,
        offsets: dict[TopicPartition, int],
        dead_letters: list[asyncio.Future[object]],
        stop: asyncio.Event,
        turn: WriteTurn,
    ) -> bool:
        store = self.pipeline.store

        async def send(write: BatchWrite) -> list[str]:
            return await asyncio.to_thread(_when_its_turn, turn, store.send, write)

        outcome = await until_redis_answers(lambda: self.pipeline.save(prepared, send), stop)  # steps a, b
        self._release(prepared)  # c
        if outcome is None:
            return False  # stopping while Redis is down: nothing committed, the batch will be redelivered
        if dead_letters:
            await asyncio.gather(*dead_letters)  # d
        committing = time.perf_counter()
        try:
            await self.commit(offsets)  # e
        except CommitFailedError as exc:
            # We lost the partitions in a rebalance; the new owner re-reads from the last commit and the
            # offset fence in each lead record keeps that replay from counting anything twice.
            log.warning("offset commit refused after a rebalance (%s); the new owner will resume", exc)
        metrics.BATCH_STAGE_SECONDS.labels("commit").observe(time.perf_counter() - committing)
        self.saved(outcome, offsets)
        return True

    def _release(self, prepared: PreparedBatch) -> None:
        """Its leads are written (or given up): later batches read them from Redis, unless a newer batch holds
        them."""
        held = self.held
        for record in prepared.records:
            if held.get(record.lead_id) is record:
                del held[record.lead_id]


def _when_its_turn(turn: WriteTurn, send: Callable[[BatchWrite], list[str]], write: BatchWrite) -> list[str]:
    turn.wait()
    return send(write)
