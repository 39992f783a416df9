"""The service on a three-master Redis Cluster (LEADSCORE_REDIS_CLUSTER=true): a consumer killed mid-stream and
restarted leaves exact counts, the keys are spread over every master, and the API agrees with what is stored."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis.cluster

from tests.support import (
    StackNames,
    assert_matches_clean_replay,
    produce_events,
    stack_env,
    start_api,
    start_consumer,
    stored_event_total,
    stored_records,
    synthetic_events,
    wait_until,
)

LEADS = 300


def test_on_a_cluster_a_killed_consumer_restarts_exactly_and_the_api_reads_what_is_stored(
    redis_cluster_url: str, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    client = redis.cluster.RedisCluster.from_url(redis_cluster_url)
    try:
        client.flushall()
        names = StackNames.unique(unique_name("cluster"))
        env = stack_env(redis_cluster_url, kafka_bootstrap, names, batch_max_records="250", redis_cluster="true")
        events = synthetic_events(LEADS, per_lead=40, seed=41)
        total = len(events)
        produce_events(kafka_bootstrap, names.events_topic, events)
        first, _ = start_consumer(env, tmp_path, "consumer-1")
        try:
            wait_until(lambda: stored_event_total(client) >= 0.4 * total, timeout=90, message="40% applied")
        finally:
            first.kill()
        second, _ = start_consumer(env, tmp_path, "consumer-2")
        api, base = start_api(env, tmp_path)
        try:
            wait_until(lambda: stored_event_total(client) >= total, timeout=120, message="all events applied")
            records = stored_records(client)
            _api_agrees(base, records)
        finally:
            api.stop()
            second.stop()
        assert_matches_clean_replay(client, events)
        per_master = [client.dbsize(target_nodes=node) for node in client.get_primaries()]
        assert len(per_master) == 3 and all(size > 0 for size in per_master), per_master
    finally:
        client.disconnect_connection_pools()
        client.close()


def _api_agrees(base: str, records: dict[str, Any]) -> None:
    rng = random.Random(3)
    for lead_id in rng.sample(sorted(records), 20):
        view = httpx.get(f"{base}/leads/{lead_id}", timeout=5).json()
        assert view["score"] == records[lead_id].score and view["segments"] == records[lead_id].segments
        assert view["event_counts"] == records[lead_id].state.counts
    wanted = [*sorted(records)[:40], "nobody"]
    batch = httpx.post(f"{base}/leads/batch-get", json={"lead_ids": wanted}, timeout=5).json()
    assert [v["lead_id"] for v in batch["leads"]] == wanted[:-1] and batch["missing"] == ["nobody"]
    assert all(v["score"] == records[v["lead_id"]].score for v in batch["leads"])

    listing = httpx.get(f"{base}/segments", timeout=5).json()["sets"]
    sizes = {(s["name"], segment["name"]): segment["size"] for s in listing for segment in s["segments"]}
    stored_sizes = Counter((name, segment) for r in records.values() for name, segment in r.segments.items())
    assert sizes == {key: stored_sizes.get(key, 0) for key in sizes}
    for (segment_set, name), size in stored_sizes.items():
        seen: list[tuple[float, str]] = []
        cursor = None
        for _ in range(LEADS):  # bounded walk: each page has at least one lead
            params: dict[str, str | int] = {"limit": 9} | ({"cursor": cursor} if cursor else {})
            page = httpx.get(f"{base}/segments/{segment_set}/{name}/leads", params=params, timeout=5).json()
            seen += [(lead["score"], lead["lead_id"]) for lead in page["leads"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        members = sorted(((r.score, lead) for lead, r in records.items() if r.segments[segment_set] == name))
        assert seen == members[::-1] and len(seen) == size, (segment_set, name)
