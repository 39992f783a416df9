"""`POST /events` in-process against the real broker and Redis: valid events reach the events topic keyed by lead
exactly as sent, invalid ones are reported with the consumer's reasons, and a broker that does not take them is a
503 that reports nothing as accepted. `DELETE /leads/{id}` goes the same way: its erasure request is on the events
topic, keyed by the lead, before the lead is erased; without the broker nothing is erased."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from app.api.app import create_app
from app.domain.lead import LeadRecord
from app.settings import Settings
from app.storage.leads import open_store
from consumers.ingest import EventIngest
from devtools.servers import free_port
from models.state import LeadState
from schemas.api import MAX_INGEST_EVENTS
from schemas.events import ERASURE_HEADER, ErasureRequest
from tests.support import create_topics, in_process, read_topic


def api_with_ingest(settings: Settings) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    return in_process(create_app(settings, EventIngest(settings)))


async def settings_on_a_new_topic(redis_url: str, kafka_bootstrap: str, topic: str) -> Settings:
    """The API's settings with its events topic on the test broker, created with 3 partitions."""
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    return Settings(redis_url=redis_url, kafka_bootstrap_servers=kafka_bootstrap, events_topic=topic)


def event(n: int, **changes: Any) -> dict[str, Any]:
    ts = (datetime.now(UTC) - timedelta(minutes=n)).isoformat()
    return {"event_id": f"E-{n}", "lead_id": f"L-{n % 3}", "type": "page_view", "ts": ts} | changes


async def test_valid_events_reach_the_topic_keyed_by_lead_and_invalid_ones_are_reported(
    redis_url: str, redis_client: object, kafka_bootstrap: str, unique_name: Any
) -> None:
    settings = await settings_on_a_new_topic(redis_url, kafka_bootstrap, topic := unique_name("ingest"))
    batch: list[Any] = [
        event(1),
        event(2, type="demo_request", properties={"source": "pricing"}),
        event(3, ts="2001-01-01T00:00:00Z"),  # older than LEADSCORE_EVENT_MAX_AGE_DAYS
        {"event_id": "E-4", "type": "page_view"},  # no lead_id, no ts
        "not an event",
        event(6),
    ]
    async with api_with_ingest(settings) as client:
        response = await client.post("/events", json=batch)
        assert response.status_code == 202, response.text
        body = response.json()
        single = await client.post("/events", json=event(7))
        assert single.status_code == 202 and single.json()["accepted"] == 1

    assert (body["accepted"], body["rejected"]) == (3, 3)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(batch)))
    assert [r["accepted"] for r in results] == [True, True, False, False, False, True]
    assert results[2]["reason"] == "ts_out_of_range" and "days in the past" in results[2]["message"]
    assert results[3]["reason"] == "invalid_event" and "lead_id" in results[3]["message"]
    assert results[3]["event_id"] == "E-4" and results[4]["reason"] == "invalid_event"

    produced = read_topic(kafka_bootstrap, topic, expected=4)
    assert len(produced) == 4  # nothing of the refused events
    by_event = {orjson.loads(r.value)["event_id"]: r for r in produced if r.value}
    assert set(by_event) == {"E-1", "E-2", "E-6", "E-7"}
    for event_id, record in by_event.items():
        assert record.key == orjson.loads(record.value or b"{}")["lead_id"].encode(), event_id
    assert orjson.loads(by_event["E-2"].value or b"{}") == batch[1]  # the event as sent, for the consumer to check


async def test_bad_requests_are_4xx_json(redis_url: str, redis_client: object, kafka_bootstrap: str) -> None:
    settings = Settings(redis_url=redis_url, kafka_bootstrap_servers=kafka_bootstrap)
    async with api_with_ingest(settings) as client:
        not_json = await client.post("/events", content=b"{nope", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["message"]
        too_many = await client.post("/events", json=[event(n) for n in range(MAX_INGEST_EVENTS + 1)])
        assert too_many.status_code == 422 and str(MAX_INGEST_EVENTS) in too_many.json()["message"]
        empty = await client.post("/events", json=[])
        assert empty.status_code == 422 and empty.json()["error"] == "invalid_request"


async def test_a_broker_that_does_not_answer_is_a_503_and_nothing_is_reported_accepted(
    redis_url: str, redis_client: object, unique_name: Any
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    settings = Settings(redis_url=redis_url, kafka_bootstrap_servers=nowhere, events_topic=unique_name("lost"))
    async with api_with_ingest(settings) as client:
        response = await client.post("/events", json=[event(1), event(2)])
        assert response.status_code == 503
        assert response.json()["error"] == "unavailable" and nowhere in response.json()["message"]
        # reads do not need the broker
        assert (await client.get("/readyz")).status_code == 200


async def test_without_a_producer_the_route_says_so(redis_url: str, redis_client: object) -> None:
    async with in_process(create_app(Settings(redis_url=redis_url))) as client:
        response = await client.post("/events", json=event(1))
    assert response.status_code == 503 and "no events" in response.json()["message"]


async def stored_lead(settings: Settings, lead_id: str) -> None:
    store = open_store(settings)
    try:
        record = LeadRecord(lead_id, LeadState(), 0, 10, 0.7, {"tier": "hot"}, "m1", 1_790_000_000_000)
        assert await store.save_batch([record]) == []
    finally:
        await store.close()


async def test_an_erasure_request_is_on_the_events_topic_before_the_lead_is_erased(
    redis_url: str, redis_client: Any, kafka_bootstrap: str, unique_name: Any
) -> None:
    settings = await settings_on_a_new_topic(redis_url, kafka_bootstrap, topic := unique_name("erasures"))
    await stored_lead(settings, "L-erase")
    async with api_with_ingest(settings) as client:
        response = await client.delete("/leads/L-erase")
        assert response.status_code == 200, response.text
        assert (await client.get("/leads/L-erase")).status_code == 404
    (produced,) = read_topic(kafka_bootstrap, topic, expected=1)
    request = ErasureRequest.model_validate_json(produced.value or b"")
    assert produced.key == b"L-erase" and request.lead_id == "L-erase"
    assert dict(produced.headers)[ERASURE_HEADER] == request.erasure_id.encode()
    assert request.erasure_id == response.json()["erasure_id"] and request.segments == {"tier": "hot"}


async def test_without_the_broker_an_erasure_is_a_503_and_erases_nothing(
    redis_url: str, redis_client: Any, unique_name: Any
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    settings = Settings(redis_url=redis_url, kafka_bootstrap_servers=nowhere, events_topic=unique_name("lost"))
    await stored_lead(settings, "L-stays")
    async with api_with_ingest(settings) as client:
        response = await client.delete("/leads/L-stays")
        assert response.status_code == 503 and "nothing was erased" in response.json()["message"]
        assert (await client.get("/leads/L-stays")).status_code == 200
