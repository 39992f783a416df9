"""The pure batch fold: offset fence, duplicate event ids, per-lead order."""

from __future__ import annotations

from app.pipeline import SourcedEvent, fold_batch
from app.records import EVENT_ID_HASH_BYTES, LeadRecord
from models.spec import load_feature_spec
from models.state import LeadState, fold
from schemas.events import Event

SPEC = load_feature_spec()
T0 = 1_790_000_000_000


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


def test_another_partition_is_not_fenced_by_the_old_one() -> None:
    stored = fold_batch({}, [sourced(10, partition=0)], SPEC, dedupe_window=16).records
    moved = fold_batch(stored, [sourced(5, partition=3)], SPEC, dedupe_window=16)
    assert len(moved.applied) == 1 and moved.records["L-1"].partition == 3
