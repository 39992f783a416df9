"""The API in-process with its lifespan running: authentication, Redis outages, input validation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from app.api import create_app, lead_document, lead_view, render_lead
from app.localstack import free_port
from app.pipeline import score_leads
from app.records import LeadRecord
from app.settings import DEFAULT_MODEL_PATH, Settings
from models.scoring import load_scorer
from schemas.api import LeadView
from tests.support import simulated_leads


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://leadscore.test") as client:
            yield client


async def test_redis_down_is_a_json_503_and_not_ready() -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_seconds=0.5)
    async with api_client(settings) as client:
        for path in ("/leads/L-1", "/segments", "/segments/hot/leads"):
            response = await client.get(path)
            assert response.status_code == 503, path
            assert response.json()["error"] == "unavailable"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["redis"] is False
        assert (await client.get("/healthz")).status_code == 200


async def test_api_keys_guard_data_but_not_health(redis_url: str, redis_client: object) -> None:
    async with api_client(Settings(redis_url=redis_url, api_keys=["s3cret"])) as client:
        denied = await client.get("/segments")
        assert denied.status_code == 401
        assert denied.json()["error"] == "unauthorized"
        assert (await client.get("/segments", headers={"X-API-Key": "wrong"})).status_code == 401
        assert (await client.get("/segments", headers={"X-API-Key": "s3cret"})).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(open_path)).status_code == 200, open_path


async def test_invalid_parameters_are_422_with_a_message(redis_url: str, redis_client: object) -> None:
    async with api_client(Settings(redis_url=redis_url)) as client:
        for path in (
            "/segments/hot/leads?limit=5000",
            "/segments/hot/leads?limit=-1",
            f"/segments/hot/leads?cursor={'x' * 3000}",
            "/leads/" + "x" * 300,
            "/leads/L%201",  # whitespace in a lead id
            "/leads/L-1?reasons=maybe",
            "/leads/L-1?fresh=2",
        ):
            response = await client.get(path)
            assert response.status_code == 422, path
            body = response.json()
            assert body["error"] == "invalid_request" and body["message"], path
        too_big = await client.post("/segments", content=b"x" * 2_000_000)
        assert too_big.status_code == 413 and too_big.json()["error"] == "body_too_large"
        not_allowed = await client.post("/segments")
        assert not_allowed.status_code == 405 and not_allowed.json()["message"]


async def test_lead_flags_read_as_fastapi_reads_booleans(redis_url: str, redis_client: object) -> None:
    async with api_client(Settings(redis_url=redis_url)) as client:
        for flag in ("true", "False", "1", "0", "yes", "off", "T", "n"):
            response = await client.get(f"/leads/never-seen?reasons={flag}&fresh={flag}")
            assert response.status_code == 404, flag  # the flags parsed; the lead does not exist
            assert "never-seen" in response.json()["message"]


def test_get_lead_renders_byte_for_byte_what_the_lead_view_model_renders() -> None:
    """GET /leads/{id} renders its body with orjson; the documented LeadView must describe it exactly."""
    config = Settings().service_config
    scorer = load_scorer(DEFAULT_MODEL_PATH, config.features)
    records = simulated_leads(config, leads=40, events=800, seed=5)
    at_ms = max(r.state.anchor_ms for r in records) + 3_600_000
    score_leads(records, at_ms, scorer, config.features, config.segments)
    records.append(LeadRecord("L-never-scored"))
    assert any(r.state.profile for r in records) and any(r.score is None for r in records)
    for record in records:
        for reasons, fresh_at_ms in ((0, None), (3, at_ms + 86_400_000)):
            document = lead_document(record, config, scorer, reasons=reasons, fresh_at_ms=fresh_at_ms)
            modelled = LeadView.model_validate(document).model_dump_json().encode()
            assert render_lead(document) == modelled, record.lead_id
        plain = lead_document(record, config)
        assert lead_view(record, config).model_dump_json().encode() == render_lead(plain)
