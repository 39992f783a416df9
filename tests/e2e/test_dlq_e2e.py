"""The dead-letter tools as an operator uses them: `leadscore dlq show` lists what the consumer refused, with the
reason and the origin; after the cause is fixed, `leadscore dlq replay --reason ... --yes` sends it back and the
consumer applies it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import redis

from tests.support import (
    StackNames,
    produce_raw,
    run_leadscore,
    stack_env,
    start_consumer,
    stored_records,
    wait_until,
)


def _event(lead: str, days_ago: float) -> bytes:
    ts = (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()
    return orjson.dumps({"event_id": f"{lead}-1", "lead_id": lead, "type": "page_view", "ts": ts})


def test_show_the_refused_events_then_replay_them_after_the_fix(
    redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    names = StackNames.unique(unique_name("dlq"))
    strict = stack_env(redis_url, kafka_bootstrap, names, event_max_age_days="1")  # the mistake to fix
    consumer, _ = start_consumer(strict, tmp_path, "consumer-strict")
    try:
        wait_until(lambda: run_leadscore(strict, "dlq", "show").returncode == 0, timeout=60, message="topics exist")
        produce_raw(
            kafka_bootstrap,
            names.events_topic,
            [(b"L-now", _event("L-now", 0)), (b"L-old", _event("L-old", 10)), (b"L-bad", b"{not json")],
        )

        def dead_letters() -> list[dict[str, Any]]:
            shown = run_leadscore(strict, "dlq", "show", "--json", "--limit", "0")
            assert shown.returncode == 0, shown.stderr
            letters: list[dict[str, Any]] = orjson.loads(shown.stdout)
            return letters

        letters = wait_until(lambda: len(d := dead_letters()) == 2 and d, timeout=60, message="two dead letters")
        assert "L-now" in stored_records(redis_client)
    finally:
        consumer.stop()
    by_key = {letter["key"]: letter for letter in letters}
    assert by_key["L-old"]["reason"] == "ts_out_of_range" and "days in the past" in by_key["L-old"]["error"]
    assert by_key["L-bad"]["reason"] == "invalid_json" and by_key["L-bad"]["value"] == "{not json"
    assert all(letter["source"].startswith(f"{names.events_topic}/") for letter in letters)
    text = run_leadscore(strict, "dlq", "show")
    assert "2 dead letters" in text.stdout and "1 ts_out_of_range" in text.stdout

    fixed = stack_env(redis_url, kafka_bootstrap, names)  # the default: 400 days
    asked = run_leadscore(fixed, "dlq", "replay", "--reason", "ts_out_of_range")
    assert asked.returncode == 2 and "1 dead letters" in asked.stderr and "--yes" in asked.stderr
    consumer, _ = start_consumer(fixed, tmp_path, "consumer-fixed")
    try:
        replayed = run_leadscore(fixed, "dlq", "replay", "--reason", "ts_out_of_range", "--yes")
        assert replayed.returncode == 0 and "sent 1 dead letters" in replayed.stdout, replayed.stderr
        wait_until(lambda: "L-old" in stored_records(redis_client), timeout=60, message="the replayed event applied")
    finally:
        consumer.stop()
    records = stored_records(redis_client)
    assert records["L-old"].state.counts == {"page_view": 1} and "L-bad" not in records
