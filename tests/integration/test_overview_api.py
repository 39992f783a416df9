"""What the page reads, in-process on one Redis and on a cluster: the activity feed, the score histogram, the serving
model with its report and plots, a segment's CSV export, and the page's own files (open, while data needs a key)."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import numpy as np
import orjson

from app.api.app import create_app
from app.api.deps import ServiceState
from app.domain.batch import score_leads
from app.domain.lead import LeadRecord
from app.settings import Settings
from app.storage.leads import Activity, LeadStore
from models.scoring import Scorer
from tests.support import RedisBackend, in_process, simulated_leads

READ = {"X-API-Key": "reader"}


@asynccontextmanager
async def api_with_leads(
    settings: Settings, activity: Activity
) -> AsyncIterator[tuple[httpx.AsyncClient, list[LeadRecord], LeadStore]]:
    """The API over 300 scored leads, written with `activity`; and its store."""
    app = create_app(settings)
    async with in_process(app, headers=READ) as client:
        service: ServiceState = app.state.service
        config = settings.service_config
        records = simulated_leads(config, leads=300, events=6000, seed=5)
        score_leads(
            records,
            max(r.state.anchor_ms for r in records),
            service.scorer,
            config.features,
            config.segments,
        )
        assert await service.store.save_batch(records, activity=activity) == []
        yield client, records, service.store


def change(lead_id: str, n: int) -> bytes:
    return orjson.dumps({"kind": "segment_change", "change_id": f"c{n}", "lead_id": lead_id, "to_segment": "hot"})


async def test_activity_histogram_and_erasure_from_the_feed(redis_backend: RedisBackend) -> None:
    settings = redis_backend.service_settings(api_keys=["reader:read", "ops:admin"])
    changes = [change(f"L-{n % 3}", n) for n in range(5)]
    async with api_with_leads(settings, Activity(events=1234, changes=changes)) as (client, records, store):
        activity = (await client.get("/activity", params={"seconds": 30, "changes": 10})).json()
        assert len(activity["events_per_second"]) == 30
        assert sum(second["events"] for second in activity["events_per_second"]) == 1234
        assert [c["change_id"] for c in activity["recent_changes"]] == ["c4", "c3", "c2", "c1", "c0"]

        histogram = (await client.get("/scores/histogram", params={"bins": 10})).json()
        scores = [r.score for r in records if r.score is not None]
        expected, _ = np.histogram(scores, bins=10, range=(0.0, 1.0))  # [a, b) bins, the last one closed: ours
        assert histogram["counts"] == expected.tolist() and histogram["total"] == len(records)
        assert histogram["segment_set"] == settings.service_config.segments.primary
        assert (await client.get("/scores/histogram", params={"segment_set": "nope"})).status_code == 404

        # an erased lead leaves the feed too
        await store.erase("L-1")
        activity = (await client.get("/activity")).json()
        assert [c["change_id"] for c in activity["recent_changes"]] == ["c3", "c2", "c0"]  # c1 and c4 were L-1's


async def test_the_serving_model_its_report_and_plots(redis_backend: RedisBackend) -> None:
    settings = redis_backend.service_settings(api_keys=["reader:read"])
    async with api_with_leads(settings, Activity(0, [])) as (client, _, _store):
        model = (await client.get("/model")).json()
        assert model["version"] == Scorer.load(settings.model_path).version
        assert {"report.md", "roc.png", "calibration.png"} <= set(model["files"])
        assert 0.5 < model["metrics"]["roc_auc"] <= 1
        report = await client.get("/model/files/report.md")
        assert report.headers["content-type"].startswith("text/markdown") and model["version"] in report.text
        plot = await client.get("/model/files/roc.png")
        assert plot.headers["content-type"] == "image/png" and plot.content.startswith(b"\x89PNG")
        missing = await client.get("/model/files/model.txt")  # the model itself is not a file for people
        assert missing.status_code == 404 and "GET /model" in missing.json()["message"]


async def test_a_segment_exports_as_csv_in_rank_order(redis_backend: RedisBackend) -> None:
    settings = redis_backend.service_settings()
    async with api_with_leads(settings, Activity(0, [])) as (client, records, _store):
        primary = settings.service_config.segments.primary
        members = [r for r in records if r.segments.get(primary) == records[0].segments[primary]]
        segment = members[0].segments[primary]
        response = await client.get(f"/segments/{primary}/{segment}/leads.csv")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        expected = sorted(members, key=lambda r: (r.score or 0, r.lead_id), reverse=True)
        assert [row["lead_id"] for row in rows] == [r.lead_id for r in expected]
        assert [int(row["rank"]) for row in rows] == list(range(1, len(expected) + 1))
        assert float(rows[0]["score"]) == expected[0].score and rows[0]["last_event_at"].startswith("20")
        assert (await client.get(f"/segments/{primary}/no-such/leads.csv")).status_code == 404


async def test_the_page_is_open_and_its_data_needs_a_key(redis_backend: RedisBackend) -> None:
    settings = redis_backend.service_settings(api_keys=["reader:read"])
    async with api_with_leads(settings, Activity(0, [])) as (client, _, _store):
        anonymous = {"X-API-Key": ""}
        page = await client.get("/ui", headers=anonymous)
        assert page.status_code == 200 and "/ui/assets/page.js" in page.text
        script = await client.get("/ui/assets/page.js", headers=anonymous)
        assert script.status_code == 200 and "X-API-Key" in script.text
        assert (await client.get("/ui/assets/page.css", headers=anonymous)).status_code == 200
        for path in ("/activity", "/scores/histogram", "/model", "/segments/tier/hot/leads.csv"):
            assert (await client.get(path, headers=anonymous)).status_code == 401, path
            assert (await client.get(path)).status_code == 200, path
