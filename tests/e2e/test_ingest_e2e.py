"""Events posted over HTTP are scored like events produced to Kafka: `leadscore serve` takes them, the consumer
applies them, and the API serves the lead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.support import StackNames, stack_env, start_api, start_consumer, wait_until


def test_posted_events_are_scored_and_served(
    redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    names = StackNames.unique(unique_name("http"))
    env = stack_env(redis_url, kafka_bootstrap, names)
    now = datetime.now(UTC)
    kinds = ["page_view", "email_open", "demo_request", "page_view", "form_fill"]
    events = [
        {"event_id": f"H-{n}", "lead_id": f"L-http-{n % 2}", "type": kind, "ts": (now - timedelta(hours=n)).isoformat()}
        for n, kind in enumerate(kinds)
    ]
    consumer, _ = start_consumer(env, tmp_path)  # creates the topics
    api, base = start_api(env, tmp_path)
    try:
        answer = httpx.post(f"{base}/events", json=events, timeout=30).json()
        assert answer["accepted"] == len(events) and answer["rejected"] == 0
        expected = {
            "L-http-0": {"page_view": 1, "demo_request": 1, "form_fill": 1},
            "L-http-1": {"email_open": 1, "page_view": 1},
        }

        def served() -> dict[str, Any]:
            views = {lead: httpx.get(f"{base}/leads/{lead}", timeout=5) for lead in expected}
            return {lead: r.json()["event_counts"] for lead, r in views.items() if r.status_code == 200}

        assert wait_until(lambda: served() == expected and served(), timeout=60, message="the posted events scored")
        view = httpx.get(f"{base}/leads/L-http-0", timeout=5).json()
        assert view["score"] is not None and view["segments"]["tier"]
    finally:
        api.stop()
        consumer.stop()
