"""LeadStore against a real redis-server: record round trip, zombie fence, segment index, paging."""

from __future__ import annotations

import pytest
import redis

from app.records import LeadRecord, RecordDecodeError, decode_record, encode_record, event_id_hash
from app.store import LeadStore, lead_key, segment_key
from models.spec import load_feature_spec
from models.state import LeadState, fold
from schemas.events import Event

SPEC = load_feature_spec()


def record(lead: str, offset: int, segment: str, score: float, partition: int = 0) -> LeadRecord:
    events = [Event(event_id=f"{lead}-{offset}", lead_id=lead, type="page_view", ts=1_790_000_000_000 + offset)]
    segments = {"tier": segment, "fit": "smb"}
    return LeadRecord(lead, fold(LeadState(), events, SPEC), partition, offset, score, segments, "m1", 5)


def test_record_round_trip_and_corruption() -> None:
    original = record("L-1", 7, "hot", 0.5)
    original.remember_event(event_id_hash("x"), 16)
    decoded = decode_record("L-1", encode_record(original))
    assert decoded == original
    assert decoded.seen_event(event_id_hash("x"))
    with pytest.raises(RecordDecodeError, match="L-1"):
        decode_record("L-1", b"not a record")
    with pytest.raises(RecordDecodeError, match="version"):
        decode_record("L-1", b"9|0|0||{}")


async def test_newer_state_is_never_overwritten_by_an_older_offset(redis_url: str, redis_client: redis.Redis) -> None:
    store = LeadStore.from_url(redis_url)
    try:
        assert await store.save_batch([record("L-1", 10, "warm", 0.2)]) == []
        # the new owner after a rebalance writes offset 20; the zombie then tries offset 15
        assert await store.save_batch([record("L-1", 20, "hot", 0.8)]) == []
        assert await store.save_batch([record("L-1", 15, "cold", 0.01), record("L-2", 3, "cold", 0.01)]) == ["L-1"]
        stored = await store.get("L-1")
        assert stored is not None and stored.offset == 20 and stored.segments["tier"] == "hot"
        # the same write again (a retry after a lost reply) is refused too, and changes nothing
        assert await store.save_batch([record("L-1", 20, "warm", 0.3)]) == ["L-1"]
        assert redis_client.zrange(segment_key("tier", "hot"), 0, -1, withscores=True) == [(b"L-1", 0.8)]
        assert redis_client.zrange(segment_key("tier", "cold"), 0, -1) == [b"L-2"]
        assert redis_client.zcard(segment_key("tier", "warm")) == 0  # moved out when it became hot
        assert redis_client.zcard(segment_key("fit", "smb")) == 2
    finally:
        await store.close()


async def test_load_many_and_paging_with_ties(redis_url: str, redis_client: redis.Redis) -> None:
    store = LeadStore.from_url(redis_url)
    try:
        scores = {f"L-{i:02d}": [0.9, 0.5, 0.5, 0.5, 0.1][i % 5] for i in range(23)}
        await store.save_batch([record(lead, 1, "warm", score) for lead, score in scores.items()])
        loaded = await store.load_many(["L-00", "missing", "L-22"])
        assert set(loaded) == {"L-00", "L-22"}
        walked: list[tuple[str, float]] = []
        cursor = None
        for _ in range(30):
            page = await store.segment_page("tier", "warm", 4, cursor)
            walked += page.leads
            cursor = page.next_cursor
            if cursor is None:
                break
        assert sorted(walked) == sorted(scores.items())
        assert [s for _, s in walked] == sorted(scores.values(), reverse=True)
        assert redis_client.exists(lead_key("L-00")) == 1
    finally:
        await store.close()
