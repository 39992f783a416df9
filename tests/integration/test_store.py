"""LeadStore against a real redis-server: record codec, layouts across feature
specs, zombie fence, segment and due indexes, score history, paging."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis

from app.domain.lead import LeadRecord, event_id_hash
from app.storage.codec import (
    RecordCodec,
    RecordDecodeError,
    RecordLayout,
    UnknownRecordLayout,
    default_codec,
)
from app.storage.keys import due_key, layout_key, lead_key, segment_key
from app.storage.leads import Fence, LeadStore
from models.spec import FeatureSpec, load_feature_spec, read_config_file
from models.state import OTHER_TYPES, LeadState, fold
from schemas.events import Event
from tests.support import RedisBackend

SPEC = load_feature_spec()
CODEC = default_codec()
T0 = 1_790_000_000_000
HOUR_MS = 3_600_000
MODEL_VERSION = "m20261122T154406Z-f252bb"


def record(lead: str, offset: int, segment: str, score: float, partition: int = 0) -> LeadRecord:
    events = [Event(event_id=f"{lead}-{offset}", lead_id=lead, type="page_view", ts=T0 + offset)]
    segments = {"tier": segment, "fit": "smb"}
    return LeadRecord(lead, fold(LeadState(), events, SPEC), partition, offset, score, segments, "m1", 5)


def typical_lead(lead: str = "L-000042") -> LeadRecord:
    """A lead as the simulator makes them: a profile, then a handful of emails and page views."""
    profile = {
        "industry": "software",
        "company_size": "201-1000",
        "country": "US",
        "job_title": "VP Marketing",
        "lead_source": "webinar",
    }
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("profile_update", profile),
        ("email_send", {"campaign": "nov-webinar"}),
        ("email_open", {"campaign": "nov-webinar"}),
        ("page_view", {"category": "blog"}),
        ("page_view", {"category": "pricing"}),
        ("page_view", {"category": "docs"}),
        ("email_click", {"campaign": "nov-webinar"}),
        ("form_fill", {"form": "newsletter"}),
    ]
    events = [
        Event(event_id=f"{lead}-{n}", lead_id=lead, type=kind, ts=T0 + n * 7 * HOUR_MS, properties=properties)
        for n, (kind, properties) in enumerate(kinds)
    ]
    typical = LeadRecord(
        lead,
        fold(LeadState(), events, SPEC),
        partition=3,
        offset=123_456_789,
        score=0.07816237051384616,
        segments={"tier": "cold", "lifecycle": "new", "fit": "mid_market"},
        model_version=MODEL_VERSION,
        scored_ms=T0 + 60 * HOUR_MS,
        due_ms=T0 + 61 * HOUR_MS,
    )
    for event in events:
        typical.remember_event(event_id_hash(event.event_id), 8)
    return typical


def every_field_record() -> LeadRecord:
    """Every field set, and names no layout has a place for: unknown types, `_other`, extra attributes."""
    state = LeadState(
        counts={"email_open": 3, "page_view": 12, "chat_started": 2, OTHER_TYPES: 5, "converted": 1},
        decayed={signal.name: 0.1 + i / 3 for i, signal in enumerate(SPEC.signals)},
        anchor_ms=T0 + 9 * HOUR_MS,
        first_event_ms=T0 - 40 * 24 * HOUR_MS,
        last_high_intent_ms=T0 + 2 * HOUR_MS,
        active_days=0b10_1100_0000_0000_0000_0000_0000_0101,
        profile={"industry": "Fintech — Zürich", "country": "CH", "favourite_colour": "teal", "crm_id": "0042"},
        profile_ms={"industry": T0, "country": T0 + 1, "favourite_colour": T0 + 2, "crm_id": T0 + 3},
    )
    full = LeadRecord("L-every", state, 5, 77, None, {}, MODEL_VERSION, T0 + 10 * HOUR_MS, b"", None)
    for n in range(16):
        full.remember_event(event_id_hash(f"e-{n}"), 16)
    return full


def other_spec() -> FeatureSpec:
    """The default spec with one signal removed and one added: a different record layout."""
    features = read_config_file()["features"]
    features["signals"] = [s for s in features["signals"] if s["name"] != "docs_view"] + [
        {"name": "chat", "types": ["chat_started"], "half_life": "3d"}
    ]
    return FeatureSpec.model_validate(features)


def test_typical_lead_is_under_350_bytes() -> None:
    typical = typical_lead()
    value = CODEC.encode(typical)
    # measured: 331 bytes (244 of them the binary body after the 87-byte text header); 817 as JSON
    assert len(value) < 350
    assert CODEC.decode(typical.lead_id, value) == typical


def test_every_field_round_trips_exactly() -> None:
    full = every_field_record()
    decoded = CODEC.decode("L-every", CODEC.encode(full))
    assert decoded == full
    assert decoded.state.decayed == full.state.decayed  # float64: bit for bit
    assert decoded.score is None and decoded.due_ms is None and decoded.segments == {}
    assert decoded.seen_event(event_id_hash("e-15")) and not decoded.seen_event(event_id_hash("e-99"))
    assert decoded.state.profile["industry"] == "Fintech — Zürich"

    scored = every_field_record()
    scored.score, scored.due_ms, scored.segments = 0.1 + 0.2, T0 + 11 * HOUR_MS, {"tier": "warm", "fit": "smb"}
    assert CODEC.decode("L-every", CODEC.encode(scored)) == scored

    empty = LeadRecord("L-empty")
    assert CODEC.decode("L-empty", CODEC.encode(empty)) == empty


def test_values_the_fixed_places_cannot_hold_still_round_trip() -> None:
    odd = every_field_record()
    odd.state.counts["page_view"] = 2**40  # wider than a uint32 count
    odd.state.profile["job_title"] = "Directrice générale " * 10  # over 255 bytes of UTF-8
    odd.state.profile_ms["job_title"] = T0
    odd.state.active_days = 1 << 40  # wider than the active-days bitmap (a v1 value of a longer window)
    odd.state.profile_ms["orphan_time"] = T0  # a time without its attribute
    odd.model_version = None
    assert CODEC.decode("L-every", CODEC.encode(odd)) == odd


def test_random_folded_states_round_trip() -> None:
    rng = random.Random(7)
    types = [*SPEC.counted_types, "converted", "profile_update", "chat_started", "video_played"]
    for n in range(200):
        events = [
            Event(
                event_id=f"e-{n}-{i}",
                lead_id="L-r",
                type=rng.choice(types),
                ts=T0 + rng.randrange(60 * 24 * HOUR_MS),
                properties={"category": rng.choice(["pricing", "docs", "blog"]), "industry": rng.choice("abc")},
            )
            for i in range(rng.randrange(1, 40))
        ]
        folded = LeadRecord("L-r", fold(LeadState(), events, SPEC), 1, n, rng.random(), {"tier": "hot"}, "m", n)
        assert CODEC.decode("L-r", CODEC.encode(folded)) == folded


def test_a_layout_wider_than_64_names_or_days_round_trips() -> None:
    wide = RecordCodec(
        RecordLayout(
            signals=tuple(f"signal_{i}" for i in range(3)),
            count_types=tuple(f"type_{i}" for i in range(70)),
            profile_attributes=("industry",),
            active_days_window=100,
        )
    )
    state = LeadState(
        counts={f"type_{i}": i + 1 for i in range(0, 70, 3)} | {"unknown": 1},
        decayed={"signal_2": 0.5},
        anchor_ms=T0,
        first_event_ms=T0,
        active_days=(1 << 99) | 0b101,
        profile={"industry": "media"},
        profile_ms={"industry": T0},
    )
    lead = LeadRecord("L-wide", state, 0, 1, 0.5, {"tier": "hot"}, None, T0)
    assert wide.decode("L-wide", wide.encode(lead)) == lead


def test_corrupt_values_and_unknown_layouts_name_the_lead() -> None:
    value = CODEC.encode(typical_lead("L-1"))
    body = value.split(b"|", 6)[6]
    corrupt = [
        b"not a record",
        b"2|0|0||",
        b"2|0|0||||",  # no body at all
        value[:-60],  # truncated
        value + b"\x00",  # a trailing byte that is no JSON
        b"2|0|0|tier|0.5||" + body,  # a segment without its set
        b"2|0|zero||0.5||" + body,  # an offset that is no number
        b"2|0|0||||" + body[:4] + b"\xff" * 40,  # presence masks naming more names than the layout has
    ]
    for raw in corrupt:
        with pytest.raises(RecordDecodeError, match="L-1"):
            CODEC.decode("L-1", raw)
    with pytest.raises(RecordDecodeError, match="version 9"):
        CODEC.decode("L-1", b"9|0|0||{}")

    other = RecordCodec.for_spec(other_spec())
    with pytest.raises(UnknownRecordLayout, match="L-1") as unknown:
        other.decode("L-1", value)
    assert unknown.value.fingerprint == RecordCodec.for_spec(SPEC).layout.fingerprint
    assert unknown.value.fingerprint.hex() in str(unknown.value)
    assert isinstance(unknown.value, RecordDecodeError)


def test_layouts_are_named_by_their_fingerprint() -> None:
    default, changed = RecordLayout.from_spec(SPEC), RecordLayout.from_spec(other_spec())
    assert len(default.fingerprint) == 4 and default.fingerprint != changed.fingerprint
    again = RecordLayout.from_json(default.to_json())
    assert again.fingerprint == default.fingerprint
    assert "converted" in default.count_types.names and "profile_update" in default.count_types.names
    # a half-life is not a name: the layout does not change with it
    features = read_config_file()["features"]
    features["signals"][0]["half_life"] = "1d"
    assert RecordLayout.from_spec(FeatureSpec.model_validate(features)).fingerprint == default.fingerprint
    with pytest.raises(ValueError, match="not a record layout"):
        RecordLayout.from_json(b'{"signals": ["a"]}')


async def test_a_record_written_under_one_spec_is_read_under_another(redis_backend: RedisBackend) -> None:
    client, keys, url, cluster = redis_backend.client, redis_backend.keys, redis_backend.url, redis_backend.clustered
    writer = LeadStore.from_url(url, cluster=cluster)  # the shipped spec
    reader = LeadStore.from_url(url, spec=other_spec(), cluster=cluster)
    try:
        original = every_field_record()
        original.score, original.segments = 0.4, {"tier": "warm"}
        assert await writer.save_batch([original]) == []
        layout_name = keys.layout(writer.codec.layout.fingerprint, keys.group("L-every"))
        assert client.get(layout_name) == writer.codec.layout.to_json()
        assert not reader.codec.knows(writer.codec.layout.fingerprint)
        assert await reader.get("L-every") == original  # the writer's layout, fetched from Redis
        assert reader.codec.knows(writer.codec.layout.fingerprint)
        assert (await reader.load_many(["L-every"]))["L-every"] == original

        # the reader writes it back under its own layout (docs_view now in the trailing section); both read it
        rewritten = await reader.get("L-every")
        assert rewritten is not None
        rewritten.offset += 1
        assert await reader.save_batch([rewritten]) == []
        stored = client.get(keys.lead("L-every"))
        assert stored is not None and reader.codec.layout.fingerprint in stored
        assert await writer.get("L-every") == rewritten
        assert await reader.get("L-every") == rewritten
    finally:
        await writer.close()
        await reader.close()


async def test_every_write_keeps_the_layout_in_redis_even_after_a_flush(redis_backend: RedisBackend) -> None:
    client, keys = redis_backend.client, redis_backend.keys
    writer = LeadStore.from_url(redis_backend.url, cluster=redis_backend.clustered)
    try:
        record = every_field_record()
        key = keys.layout(writer.codec.layout.fingerprint, keys.group(record.lead_id))
        assert await writer.save_batch([record]) == []
        client.flushall()  # e.g. an operator's FLUSHALL while the consumer runs
        record.offset += 1
        assert await writer.save_batch([record]) == []
        assert client.get(key) == writer.codec.layout.to_json()
    finally:
        await writer.close()


async def test_loading_a_layout_that_was_never_registered_fails_naming_lead_and_key(
    redis_backend: RedisBackend,
) -> None:
    client, keys = redis_backend.client, redis_backend.keys
    store = LeadStore.from_url(redis_backend.url, cluster=redis_backend.clustered)
    try:
        stranger = RecordCodec.for_spec(other_spec())
        client.set(keys.lead("L-x"), stranger.encode(typical_lead("L-x")))
        with pytest.raises(UnknownRecordLayout, match=r"L-x.*record-layout:"):
            await store.load_many(["L-x"])
        client.set(keys.layout(stranger.layout.fingerprint, keys.group("L-x")), b"{}")
        with pytest.raises(RecordDecodeError, match="not a record layout"):
            await store.get("L-x")
    finally:
        await store.close()


async def test_a_layout_collision_in_redis_is_refused(redis_url: str, redis_client: redis.Redis) -> None:
    store = LeadStore.from_url(redis_url)
    try:
        redis_client.set(layout_key(store.codec.layout.fingerprint), RecordLayout.from_spec(other_spec()).to_json())
        with pytest.raises(RuntimeError, match="collision"):
            await store.save_batch([record("L-1", 1, "warm", 0.2)])
    finally:
        await store.close()


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


async def test_segment_scores_due_index_sweeps_and_history(redis_url: str, redis_client: redis.Redis) -> None:
    store = LeadStore.from_url(redis_url, history_length=2)
    try:
        first = record("L-1", 1, "warm", 0.2)
        first.due_ms, first.history_entry = T0, b'{"n":1}'
        assert await store.save_batch([first]) == []
        assert redis_client.zscore(due_key(0), "L-1") == T0
        # same segment, new score: the set ranks it by the new score
        second = record("L-1", 2, "warm", 0.25)
        second.due_ms, second.history_entry = T0 + 5, b'{"n":2}'
        assert await store.save_batch([second]) == []
        assert redis_client.zscore(segment_key("tier", "warm"), "L-1") == 0.25
        assert redis_client.zscore(due_key(0), "L-1") == T0 + 5

        # a sweep write goes through while the stored offset is the one it loaded, then is fenced
        swept = record("L-1", 2, "cold", 0.05)
        swept.history_entry = b'{"n":3}'
        assert await store.save_batch([swept], Fence.SAME_OFFSET) == []
        assert redis_client.zcard(due_key(0)) == 0  # no due time any more
        assert redis_client.zrange(segment_key("tier", "cold"), 0, -1) == [b"L-1"]
        assert redis_client.zcard(segment_key("tier", "warm")) == 0
        assert await store.save_batch([record("L-1", 1, "hot", 0.9)], Fence.SAME_OFFSET) == ["L-1"]
        assert await store.history("L-1", 10) == [b'{"n":3}', b'{"n":2}']  # newest first, trimmed to 2

        # the lead's events move to partition 4: it leaves partition 0's due index for partition 4's
        again = record("L-1", 3, "cold", 0.05)
        again.due_ms = T0 + 9
        assert await store.save_batch([again]) == []
        moved = record("L-1", 7, "cold", 0.05, partition=4)
        moved.due_ms = T0 + 9
        assert await store.save_batch([moved]) == []
        assert redis_client.zcard(due_key(0)) == 0
        assert redis_client.zscore(due_key(4), "L-1") == T0 + 9
        # a sweep of the old partition is refused and clears the lead from that partition's index
        redis_client.zadd(due_key(0), {"L-1": T0})
        assert await store.save_batch([record("L-1", 3, "cold", 0.05)], Fence.SAME_OFFSET) == ["L-1"]
        assert redis_client.zcard(due_key(0)) == 0
        assert await store.due_leads(4, T0 + 10, 10) == {"L-1": T0 + 9}
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
