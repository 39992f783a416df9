"""The API in-process with its lifespan running: authentication, Redis outages, input validation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from app.api import create_app
from app.localstack import free_port
from app.settings import Settings


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
