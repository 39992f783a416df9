"""The lead store on one Redis and on a three-master Redis Cluster: the same writes give the same reads.

On the cluster a lead's keys carry its group's hash tag, a batch write is one script call per group, and
listings, sizes and the due index merge the groups (app/storage/keys.py)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis
import redis.cluster

from app.domain.lead import LeadRecord
from app.storage.keys import CLUSTER_GROUPS, KeySpace
from app.storage.leads import ErasedState, Fence, LeadStore
from models.spec import load_feature_spec
from models.state import LeadState, fold
from schemas.events import Event
from tests.support import RedisBackend, segment_members

SPEC = load_feature_spec()
T0 = 1_790_000_000_000
TIERS = ("hot", "warm", "cold")


def lead_record(n: int, offset: int, rng: random.Random) -> LeadRecord:
    lead = f"L-{n:05d}"
    events = [Event(event_id=f"{lead}-{offset}", lead_id=lead, type="page_view", ts=T0 + offset)]
    # scores from a small set, so that listings page through ties
    score = rng.choice([0.1, 0.25, 0.5, 0.75, 0.9, rng.random()])
    segments = {"tier": rng.choice(TIERS), "fit": "smb"}
    record = LeadRecord(lead, fold(LeadState(), events, SPEC), n % 6, offset, score, segments, "m1", T0)
    record.due_ms = T0 + rng.randrange(0, 10) * 1000
    record.history_entry = b'{"score": %f}' % score
    return record


@pytest.fixture
async def store(redis_backend: RedisBackend) -> AsyncIterator[LeadStore]:
    opened = LeadStore.from_url(redis_backend.url, cluster=redis_backend.clustered)
    try:
        yield opened
    finally:
        await opened.close()


async def test_writes_reads_listings_and_the_due_index_agree_with_the_records(store: LeadStore) -> None:
    rng = random.Random(11)
    records = [lead_record(n, 10, rng) for n in range(600)]
    assert await store.save_batch(records) == []

    loaded = await store.load_many([r.lead_id for r in records] + ["L-missing"])
    assert set(loaded) == {r.lead_id for r in records}
    assert all(loaded[r.lead_id].score == r.score and loaded[r.lead_id].segments == r.segments for r in records)
    assert (await store.get(records[7].lead_id)) is not None and await store.get("L-missing") is None
    assert await store.history(records[3].lead_id, 5) == [records[3].history_entry]
    stored_ids = [lead async for page in store.lead_ids(count=100) for lead in page]
    assert sorted(stored_ids) == sorted(r.lead_id for r in records)

    expected_sizes = Counter(r.segments["tier"] for r in records)
    sizes = await store.segment_sizes([("tier", tier) for tier in TIERS])
    assert sizes == {("tier", tier): expected_sizes[tier] for tier in TIERS}

    # a listing pages through a segment in one order: score, then lead id, both descending (a sorted set's)
    members = sorted(((r.score, r.lead_id) for r in records if r.segments["tier"] == "hot"), reverse=True)
    listed: list[tuple[float, str]] = []
    cursor = None
    for _ in range(len(members)):  # bounded: each page returns at least one lead
        page = await store.segment_page("tier", "hot", 17, cursor)
        listed += [(score, lead) for lead, score in page.leads]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert listed == members
    above = await store.segment_page("tier", "hot", 1000, None, min_score=0.5)
    assert [(s, lead) for lead, s in above.leads] == [m for m in members if m[0] >= 0.5]

    partition = 2
    due = sorted((r.due_ms or 0, r.lead_id) for r in records if r.partition == partition)
    now = T0 + 5_000
    assert await store.due_count(partition, now) == sum(1 for at, _ in due if at <= now)
    earliest = await store.due_leads(partition, now, 10)
    assert list(earliest.values()) == sorted(earliest.values())
    assert set(earliest.items()) <= {(lead, at) for at, lead in due}
    assert len(earliest) == min(10, sum(1 for at, _ in due if at <= now))
    await store.forget_due(partition, list(earliest))
    assert await store.due_count(partition, now) == sum(1 for at, _ in due if at <= now) - len(earliest)


async def test_the_fence_refuses_old_and_zombie_writes_in_every_group(store: LeadStore) -> None:
    rng = random.Random(5)
    records = [lead_record(n, 100, rng) for n in range(200)]
    assert await store.save_batch(records) == []
    stale = [lead_record(n, 50, rng) for n in range(0, 200, 2)]  # an older offset: a zombie's write
    fresh = [lead_record(n, 150, rng) for n in range(1, 200, 2)]
    refused = await store.save_batch(stale + fresh)
    assert sorted(refused) == sorted(r.lead_id for r in stale)
    loaded = await store.load_many([r.lead_id for r in records])
    assert all(loaded[r.lead_id].offset == 150 for r in fresh)
    assert all(loaded[r.lead_id].offset == 100 for r in stale)
    sweep = [loaded[r.lead_id] for r in fresh[:20]]
    assert await store.save_batch(sweep, Fence.SAME_OFFSET) == []


async def test_the_model_registry(store: LeadStore) -> None:
    models = store.models
    assert await models.active() is None
    await models.register("m1", "tree text", b'{"v": 1}', 1)
    await models.register("m2", "tree text 2", b'{"v": 2}', 2)
    assert await models.versions() == ["m2", "m1"]
    assert await models.activate_if_none("m1") and not await models.activate_if_none("m2")
    stored = await models.get("m1")
    assert stored is not None and stored.model_text == "tree text" and await models.active() == "m1"


def test_on_the_cluster_a_leads_keys_share_one_slot_and_the_groups_cover_every_master(
    redis_cluster_url: str,
) -> None:
    client = redis.cluster.RedisCluster.from_url(redis_cluster_url)
    keys = KeySpace(clustered=True)
    masters = {node.name for node in client.get_primaries()}
    assert len(masters) == 3
    for lead in ("L-1", "lead:{odd}", "ümlaut"):
        group = keys.group(lead)
        slots = {
            client.keyslot(name)
            for name in (
                keys.lead(lead),
                keys.history(lead),
                keys.segment("tier", "hot", group),
                keys.due(3, group),
                keys.layout(b"\x01", group),
            )
        }
        assert len(slots) == 1, lead
        assert keys.lead_id(keys.lead(lead)) == lead
    nodes = {client.get_node_from_key(keys.segment("tier", "hot", group)).name for group in range(CLUSTER_GROUPS)}
    assert nodes == masters


async def test_erasing_a_lead_removes_its_record_history_memberships_and_due_entry(
    store: LeadStore, redis_backend: RedisBackend
) -> None:
    rng = random.Random(3)
    records = [lead_record(n, 100, rng) for n in range(300)]
    assert await store.save_batch(records) == []
    gone, kept = records[42], records[43]
    client, keys = redis_backend.client, redis_backend.keys
    sizes_before = await store.segment_sizes([("tier", tier) for tier in TIERS])

    erased = await store.erase(gone.lead_id)

    assert erased.state is ErasedState.ERASED and erased.segments == gone.segments
    assert await store.get(gone.lead_id) is None and await store.history(gone.lead_id, 5) == []
    assert gone.lead_id not in segment_members(client, "tier", gone.segments["tier"])
    assert gone.lead_id not in segment_members(client, "fit", "smb")
    assert gone.lead_id not in await store.due_leads(gone.partition, T0 + 60_000, 1000)
    sizes_after = await store.segment_sizes([("tier", tier) for tier in TIERS])
    tier = ("tier", gone.segments["tier"])
    assert sizes_after == sizes_before | {tier: sizes_before[tier] - 1}
    # nothing else moved
    assert (await store.get(kept.lead_id)) is not None and await store.history(kept.lead_id, 5) != []
    assert kept.lead_id in await store.due_leads(kept.partition, T0 + 60_000, 1000)
    assert not client.exists(keys.lead(gone.lead_id), keys.history(gone.lead_id))

    assert (await store.erase(gone.lead_id)).state is ErasedState.ABSENT


async def test_an_erasure_from_the_events_leaves_a_lead_written_after_it(store: LeadStore) -> None:
    rng = random.Random(4)
    record = lead_record(7, 500, rng)  # partition 1, offset 500
    assert await store.save_batch([record]) == []
    # an erasure request at offset 400 of the same partition: the record holds an event after it (a new lead)
    assert (await store.erase(record.lead_id, after=(record.partition, 400))).state is ErasedState.NEWER
    assert await store.get(record.lead_id) is not None
    # one at offset 600, or on another partition: the record is from before it
    assert (await store.erase(record.lead_id, after=(record.partition, 600))).state is ErasedState.ERASED
    assert await store.save_batch([lead_record(7, 700, rng)]) == []
    assert (await store.erase(record.lead_id, after=(record.partition + 1, 0))).state is ErasedState.ERASED
    assert await store.get(record.lead_id) is None


async def test_an_unreadable_record_is_erased_all_the_same(store: LeadStore, redis_backend: RedisBackend) -> None:
    rng = random.Random(6)
    record = lead_record(9, 100, rng)
    assert await store.save_batch([record]) == []
    keys = redis_backend.keys
    redis_backend.client.set(keys.lead(record.lead_id), b"not a record")
    erased = await store.erase(record.lead_id)
    assert erased.state is ErasedState.ERASED
    assert not redis_backend.client.exists(keys.lead(record.lead_id), keys.history(record.lead_id))
    # its memberships are gone from every segment set the store knows
    assert record.lead_id not in segment_members(redis_backend.client, "tier", record.segments["tier"])
