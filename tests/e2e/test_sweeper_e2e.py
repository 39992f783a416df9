"""Time moves segments: a lead that goes quiet leaves `hot` without any new event, and subscribers hear
about every transition exactly once (real broker, real Redis, the real consumer with its sweeper)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml

from app.domain.lead import LeadRecord
from app.storage.keys import KeySpace
from models.spec import read_config_file
from tests.support import (
    RedisBackend,
    StackNames,
    decode_stored,
    produce_events,
    read_available,
    stack_env,
    start_consumer,
    wait_until,
)

STALENESS_SECONDS = 3.0


def _short_half_life_config(path: Path) -> Path:
    config = read_config_file()
    for signal in config["features"]["signals"]:
        signal["half_life"] = "10s"
    path.write_text(yaml.safe_dump(config))
    return path


def _burst(lead: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    profile = {"industry": "software", "company_size": "201-1000", "job_title": "VP Marketing", "country": "US"}
    events: list[dict[str, Any]] = [
        {
            "event_id": f"{lead}-p",
            "lead_id": lead,
            "type": "profile_update",
            "ts": (now - timedelta(days=20)).isoformat(),
            "properties": profile,
        }
    ]
    kinds = [
        ("demo_request", {}),
        ("page_view", {"category": "pricing"}),
        ("form_fill", {"form": "contact"}),
        ("email_click", {}),
        ("webinar_attend", {}),
        ("page_view", {"category": "docs"}),
    ]
    for i in range(40):
        event_type, properties = kinds[i % len(kinds)]
        ts = now - timedelta(milliseconds=200 * (40 - i))
        events.append(
            {
                "event_id": f"{lead}-{i}",
                "lead_id": lead,
                "type": event_type,
                "ts": ts.isoformat(),
                "properties": properties,
            }
        )
    return events


def _tier_changes(kafka: str, topic: str, lead: str) -> list[dict[str, Any]]:
    changes = [orjson.loads(r.value) for r in read_available(kafka, topic) if r.key == lead.encode() and r.value]
    return [c for c in changes if c["segment_set"] == "tier"]


def test_a_quiet_lead_leaves_hot_by_time_alone_with_one_change_event_per_transition(
    redis_backend: RedisBackend, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    names = StackNames.unique(unique_name("sweeper"))
    client, keys = redis_backend.client, KeySpace(redis_backend.clustered)
    env = stack_env(
        redis_backend.url,
        kafka_bootstrap,
        names,
        config_path=str(_short_half_life_config(tmp_path / "config.yaml")),
        staleness_seconds=str(STALENESS_SECONDS),
        sweep_interval_seconds="0.5",
        change_reasons="3",  # off by default (see README Performance); on here to check they come with a change
        **redis_backend.settings,
    )
    lead = "L-burst"
    consumer, _ = start_consumer(env, tmp_path)
    try:
        produce_events(kafka_bootstrap, names.events_topic, _burst(lead))

        def stored() -> LeadRecord | None:
            raw = client.get(keys.lead(lead))
            return decode_stored(client, lead, raw) if raw else None

        def tier() -> str | None:
            record = stored()
            return record.segments["tier"] if record else None

        wait_until(lambda: tier() == "hot", timeout=60, interval=0.1, message="the burst makes the lead hot")
        # While it is hot and quiet, the sweeper keeps rescoring it within the staleness bound.
        scored_times = []

        def sampled_until_it_leaves_hot() -> bool:
            record = stored()
            assert record is not None
            scored_times.append(record.scored_ms)
            return record.segments["tier"] != "hot"

        wait_until(
            sampled_until_it_leaves_hot, timeout=90, interval=0.1, message="the sweeper moves the quiet lead out of hot"
        )
        rescored = sorted(set(scored_times))
        gaps = [b - a for a, b in itertools.pairwise(rescored)]
        assert len(rescored) >= 2 and max(gaps) <= (STALENESS_SECONDS + 2.0) * 1000, gaps

        changes = wait_until(
            lambda: (
                (c := _tier_changes(kafka_bootstrap, names.changes_topic, lead))
                and c[-1]["from_segment"] == "hot"
                and c
            ),
            timeout=30,
            message="the change out of hot is published",
        )
    finally:
        consumer.stop()
    # one event per real transition: a consistent chain, no repeats
    assert len({c["change_id"] for c in changes}) == len(changes)
    for before, after in itertools.pairwise(changes):
        assert after["from_segment"] == before["to_segment"] != after["to_segment"]
    assert changes[0]["from_segment"] is None
    leaving = changes[-1]
    assert leaving["trigger"] == "time" and leaving["to_segment"] != "hot"
    assert leaving["reasons"] and all(r["sentence"] for r in leaving["reasons"])
    assert sum(1 for c in changes if c["to_segment"] == "hot") == 1
