"""Erasure as a user meets it: `DELETE /leads/{id}` (admin only) removes the lead at once, the consumer publishes a
lead_erased after the lead's segment changes, and the erasure cuts the lead's events exactly where it was asked:
events produced before it (even ones not consumed yet) are erased, events produced after it start a new lead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis

from schemas.changes import LeadErased, SegmentChange, parse_change_message
from tests.support import (
    ConsumedRecord,
    StackNames,
    metric_total,
    read_available,
    stack_env,
    start_api,
    start_consumer,
    wait_until,
)

READ = {"X-API-Key": "reader"}
WRITE = {"X-API-Key": "producer"}
ADMIN = {"X-API-Key": "ops"}


def event(event_id: str, lead_id: str, kind: str, hours_ago: float) -> dict[str, Any]:
    ts = (datetime.now(UTC) - timedelta(hours=hours_ago)).isoformat()
    return {"event_id": event_id, "lead_id": lead_id, "type": kind, "ts": ts}


def post(base: str, events: list[dict[str, Any]]) -> None:
    answer = httpx.post(f"{base}/events", json=events, headers=WRITE, timeout=30)
    assert answer.status_code == 202 and answer.json()["accepted"] == len(events), answer.text


def counts(base: str, lead_id: str) -> dict[str, int] | None:
    response = httpx.get(f"{base}/leads/{lead_id}", headers=READ, timeout=5)
    return response.json()["event_counts"] if response.status_code == 200 else None


def changes_of(kafka_bootstrap: str, topic: str, lead_id: str) -> list[tuple[ConsumedRecord, Any]]:
    """The lead's messages on the change topic in their order (one partition holds them all)."""
    records = [r for r in read_available(kafka_bootstrap, topic) if r.key == lead_id.encode()]
    assert len({r.partition for r in records}) <= 1
    return [(r, parse_change_message(r.value or b"")) for r in sorted(records, key=lambda r: r.offset)]


def test_erasure_removes_the_lead_at_once_follows_its_changes_and_cuts_its_events(
    redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    names = StackNames.unique(unique_name("erase"))

    def erased_on_topic(lead_id: str, then_more: bool = False) -> list[tuple[ConsumedRecord, Any]]:
        """The lead's messages once a lead_erased is among them (and, with then_more, something after it)."""
        messages = changes_of(kafka_bootstrap, names.changes_topic, lead_id)
        kinds = [isinstance(m, LeadErased) for _, m in messages]
        found = any(kinds) and (not then_more or not kinds[-1])
        return messages if found else []

    env = stack_env(redis_url, kafka_bootstrap, names, api_keys="reader:read,producer:write,ops:admin")
    consumer, metrics_port = start_consumer(env, tmp_path)  # creates the topics
    api, base = start_api(env, tmp_path)
    try:
        post(
            base,
            [
                event("A-1", "L-gone", "demo_request", 3),
                event("A-2", "L-gone", "page_view", 2),
                event("B-1", "L-kept", "email_open", 2),
                event("B-2", "L-kept", "form_fill", 1),
            ],
        )
        wait_until(lambda: counts(base, "L-gone") and counts(base, "L-kept"), timeout=60, message="both leads scored")
        before = httpx.get(f"{base}/leads/L-gone", headers=READ, timeout=5).json()
        kept_before = httpx.get(f"{base}/leads/L-kept", headers=READ, timeout=5).json()

        # admin only; an unknown lead is a 404
        assert httpx.delete(f"{base}/leads/L-gone", headers=READ, timeout=5).status_code == 403
        assert httpx.delete(f"{base}/leads/L-gone", headers=WRITE, timeout=5).status_code == 403
        assert httpx.delete(f"{base}/leads/L-gone", timeout=5).status_code == 401
        unknown = httpx.delete(f"{base}/leads/L-never", headers=ADMIN, timeout=5)
        assert unknown.status_code == 404 and "L-never" in unknown.json()["message"]

        answer = httpx.delete(f"{base}/leads/L-gone", headers=ADMIN, timeout=30)
        assert answer.status_code == 200, answer.text
        erasure = answer.json()
        assert erasure["lead_id"] == "L-gone" and erasure["segments"] == before["segments"]
        assert erasure["change_topic"] == names.changes_topic

        # gone at once, from every read; the other lead untouched
        assert httpx.get(f"{base}/leads/L-gone", headers=READ, timeout=5).status_code == 404
        assert httpx.get(f"{base}/leads/L-gone/history", headers=READ, timeout=5).status_code == 404
        tier = before["segments"]["tier"]
        listing = httpx.get(f"{base}/segments/tier/{tier}/leads", headers=READ, timeout=5).json()
        assert "L-gone" not in {lead["lead_id"] for lead in listing["leads"]}
        kept = httpx.get(f"{base}/leads/L-kept", headers=READ, timeout=5).json()
        assert (kept["event_counts"], kept["score"]) == (kept_before["event_counts"], kept_before["score"])

        # the consumer publishes the erasure after the lead's segment changes, and counts it
        messages = wait_until(lambda: erased_on_topic("L-gone"), timeout=60, message="lead_erased on the topic")
        kinds = [type(m) for _, m in messages]
        assert kinds[-1] is LeadErased and SegmentChange in kinds and kinds.count(LeadErased) == 1
        published = messages[-1][1]
        assert (published.change_id, published.segments) == (erasure["erasure_id"], before["segments"])
        assert metric_total(f"http://127.0.0.1:{metrics_port}/metrics", "leadscore_leads_erased") == 1

        # The cut: with the consumer away, events before the erasure wait unconsumed on the topic; the erasure
        # takes them too, and the event after it starts a new lead (as does a new event of the erased lead).
        consumer.stop()
        post(base, [event("B-3", "L-kept", "webinar_attend", 0.5), event("B-4", "L-kept", "page_view", 0.4)])
        second = httpx.delete(f"{base}/leads/L-kept", headers=ADMIN, timeout=30)
        assert second.status_code == 200 and counts(base, "L-kept") is None
        post(base, [event("B-5", "L-kept", "email_click", 0.1), event("A-3", "L-gone", "page_view", 0.1)])
        consumer, metrics_port = start_consumer(env, tmp_path, name="consumer-again")

        def new_leads() -> bool:
            return counts(base, "L-kept") == {"email_click": 1} and counts(base, "L-gone") == {"page_view": 1}

        wait_until(new_leads, timeout=60, message="only the events after each erasure count")
        kept_messages = wait_until(
            lambda: erased_on_topic("L-kept", then_more=True), timeout=60, message="lead_erased, then the new lead"
        )
        erased_at = next(i for i, (_, m) in enumerate(kept_messages) if isinstance(m, LeadErased))
        assert kept_messages[erased_at][1].change_id == second.json()["erasure_id"]
        after = [m for _, m in kept_messages[erased_at + 1 :]]
        assert after and all(isinstance(m, SegmentChange) for m in after)
        assert after[0].from_segment is None  # a new lead
    finally:
        api.stop()
        consumer.stop()
