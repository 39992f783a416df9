"""The API in-process with its lifespan running: authentication, Redis outages, input validation, offline docs."""

from __future__ import annotations

import asyncio
import re
import unicodedata
from contextlib import AbstractAsyncContextManager
from html.parser import HTMLParser
from http import HTTPStatus
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from app.api.app import create_app
from app.api.deps import ServiceState
from app.api.documents import lead_document, lead_view, render_lead
from app.api.errors import error_kind
from app.api.params import parse_rfc3339
from app.domain.batch import score_leads
from app.domain.lead import LeadRecord
from app.model_registry import ActiveModelWatcher
from app.settings import DEFAULT_MODEL_PATH, Settings, SettingsInvalid, load_settings
from devtools.servers import free_port
from models.scoring import load_scorer
from schemas.api import LeadView
from schemas.events import LEAD_ID_PATTERN, Event
from tests.support import RedisBackend, in_process, simulated_leads


def api_client(settings: Settings) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    return in_process(create_app(settings))


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


async def test_not_ready_once_the_model_no_longer_follows_the_registry(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The lifespan does not start without a model; what readiness can lose is the watcher that keeps the model the
    registry's active one (`leadscore models activate`). The watcher is made to fail, not cancelled: redis-py can
    swallow a cancellation that lands during a command (redis/redis-py#2028), and a watcher fails by raising."""
    app = create_app(redis_backend.service_settings(model_poll_seconds=0.05))
    async with in_process(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        service: ServiceState = app.state.service
        assert service.model_watch is not None

        async def unreadable_registry(self: ActiveModelWatcher) -> None:
            raise RuntimeError("the registry answered something this version cannot read")

        monkeypatch.setattr(ActiveModelWatcher, "check_once", unreadable_registry)
        done, _ = await asyncio.wait([service.model_watch], timeout=10)
        assert done, "the watcher kept running after its check failed"
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "redis": True, "model_version": service.scorer.version}
    assert "stopped following the model registry" in caplog.text


async def test_api_keys_guard_data_but_not_health(redis_backend: RedisBackend) -> None:
    async with api_client(redis_backend.service_settings(api_keys=["s3cret"])) as client:
        denied = await client.get("/segments")
        assert denied.status_code == 401
        assert denied.json()["error"] == "unauthorized"
        assert (await client.get("/segments", headers={"X-API-Key": "wrong"})).status_code == 401
        assert (await client.get("/segments", headers={"X-API-Key": "s3cret"})).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(open_path)).status_code == 200, open_path


async def test_a_key_does_what_its_scopes_allow(redis_url: str, redis_client: object) -> None:
    keys = ["reader:read", "producer:write", "ops:admin", "both:read+write"]
    async with api_client(Settings(redis_url=redis_url, api_keys=keys)) as client:

        async def status(method: str, path: str, key: str, body: object = None) -> int:
            response = await client.request(method, path, headers={"X-API-Key": key}, json=body)
            if response.status_code in (401, 403):
                assert response.json()["message"], (method, path, key)
            return response.status_code

        event = {"event_id": "e-1", "lead_id": "L-1", "type": "page_view", "ts": "2026-12-07T10:00:00Z"}
        # without an event producer in-process, an allowed POST /events answers 503, a refused one 403
        assert await status("GET", "/segments", "reader") == 200
        assert await status("POST", "/leads/batch-get", "reader", {"lead_ids": ["L-1"]}) == 200
        assert await status("POST", "/events", "reader", event) == 403
        assert await status("GET", "/segments", "producer") == 403
        assert await status("POST", "/events", "producer", event) == 503
        assert await status("GET", "/leads/L-1", "ops") == 404 and await status("POST", "/events", "ops", event) == 503
        assert await status("GET", "/segments", "both") == 200 and await status("POST", "/events", "both", event) == 503
        assert await status("GET", "/segments", "reader:read") == 401  # the entry is not the key

        schema = (await client.get("/openapi.json")).json()
        assert schema["components"]["securitySchemes"]["ApiKey"] == {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": schema["components"]["securitySchemes"]["ApiKey"]["description"],
        }
        assert schema["paths"]["/segments"]["get"]["security"] == [{"ApiKey": []}]
        assert "security" not in schema["paths"]["/healthz"]["get"]


def test_a_bad_scope_is_refused_at_start_up_without_echoing_the_key() -> None:
    with pytest.raises(SettingsInvalid) as refused:
        load_settings(api_keys=["t0psecret:raed"])
    assert "raed" in str(refused.value) and "t0psecret" not in str(refused.value)
    assert "LEADSCORE_API_KEYS" in str(refused.value)


async def test_invalid_parameters_are_422_with_a_message(redis_url: str, redis_client: object) -> None:
    async with api_client(Settings(redis_url=redis_url)) as client:
        for path in (
            "/segments/hot/leads?limit=5000",
            "/segments/hot/leads?limit=-1",
            f"/segments/hot/leads?cursor={'x' * 3000}",
            "/leads/" + "x" * 300,
            "/leads/L%201",  # whitespace in a lead id
            "/leads/%1D",  # a control character (Python's `\s` counts it as whitespace, ECMA-262's does not)
            "/leads/L%EF%BB%BF1",  # U+FEFF (ECMA-262's `\s` counts it, Python's does not)
            "/segments/hot/leads?active_since=2026-11-22T10:00:00",  # no UTC offset
            "/segments/hot/leads?active_since=2026-11-22",  # a date is not a date-time
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
        assert not_allowed.json()["error"] == "method_not_allowed" and not_allowed.headers["Allow"] == "GET"
        # as in OpenAPI, the concrete path wins over /leads/{lead_id}: the batch resource allows POST
        assert (await client.put("/leads/batch-get")).headers["Allow"] == "POST"
        assert (await client.put("/leads/L-1")).headers["Allow"] == "DELETE, GET"


async def test_an_active_since_without_offset_is_refused_and_documented(redis_backend: RedisBackend) -> None:
    async with api_client(redis_backend.service_settings()) as client:
        local = await client.get("/segments/hot/leads", params={"active_since": "2026-11-22T10:00:00"})
        assert local.status_code == 422
        assert "Z or +01:00" in local.json()["message"] and "active_since" in local.json()["message"]
        for aware in ("2026-11-22T10:00:00Z", "2026-11-22T11:00:00.5+01:00", "2026-11-22t10:00:00z"):
            response = await client.get("/segments/hot/leads", params={"active_since": aware})
            assert response.status_code == 200, (aware, response.text)
        schema = (await client.get("/openapi.json")).json()
        for path in ("/segments/{segment}/leads", "/segments/{segment_set}/{segment}/leads"):
            (parameter,) = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "active_since"]
            assert "Z or +01:00" in parameter["description"], path


def test_active_since_reads_rfc_3339_exactly() -> None:
    assert parse_rfc3339("2026-11-22T11:00:00+01:00") == parse_rfc3339("2026-11-22T10:00:00Z")
    # a leap second is the next day's first instant
    assert parse_rfc3339("2016-12-31T23:59:60Z") == parse_rfc3339("2017-01-01T00:00:00Z")
    for refused in ("2026-11-22T10:00:00", "2026-11-22", "1700000000", "2026-11-22 10:00:00Z", "2026-02-30T10:00:00Z"):
        with pytest.raises(ValueError):
            parse_rfc3339(refused)
    with pytest.raises(ValueError, match="leap second"):
        parse_rfc3339("2016-12-31T12:59:60Z")


async def test_an_unreadable_body_is_a_documented_400(redis_url: str, redis_client: object) -> None:
    async with api_client(Settings(redis_url=redis_url)) as client:
        latin1 = await client.post(
            "/leads/batch-get", content=b'{"lead_ids": ["L-\xe9"]}', headers={"Content-Type": "application/json"}
        )
        assert latin1.status_code == 400
        assert latin1.json()["error"] == "bad_request" and "UTF-8" in latin1.json()["message"]
        documented = (await client.get("/openapi.json")).json()["paths"]["/leads/batch-get"]["post"]["responses"]
        assert {"400", "413", "422"} <= set(documented)


def test_every_client_error_has_a_name() -> None:
    for status in (s for s in HTTPStatus if 400 <= s < 500):
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", error_kind(status)), status
    assert (error_kind(400), error_kind(404), error_kind(405)) == ("bad_request", "not_found", "method_not_allowed")
    assert error_kind(422) == "invalid_request"


# ECMA-262 `\s` (WhiteSpace and LineTerminator, with Unicode's current Zs), spelled out from the standard.
_ECMA_WHITESPACE = {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029}
_ECMA_WHITESPACE |= {0x202F, 0x205F, 0x3000, 0xFEFF}
_CONTROL = {*range(0x00, 0x20), *range(0x7F, 0xA0)}  # Unicode Cc


def test_the_lead_id_pattern_means_the_same_in_python_and_ecma_262() -> None:
    r"""LEAD_ID_PATTERN refuses exactly whitespace by ECMA-262's `\s` (what JSON Schema clients run) plus control
    characters, in Python `re` and in pydantic (Rust `regex`) alike, over the whole Basic Multilingual Plane."""
    expected = _ECMA_WHITESPACE | _CONTROL
    # lone surrogates are not text: no UTF-8 body or URL can carry one
    code_points = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    by_python = {c for c in code_points if re.fullmatch(LEAD_ID_PATTERN, chr(c)) is None}
    assert by_python == expected
    by_pydantic = set()
    for c in code_points:
        try:
            Event.model_validate({"event_id": "e", "lead_id": chr(c), "type": "page_view", "ts": 0})
        except ValueError:
            by_pydantic.add(c)
    assert by_pydantic == expected
    # and it covers what `\s` means to Python and to Unicode, whatever the standard's list above left out
    assert {c for c in code_points if chr(c).isspace() or unicodedata.category(chr(c)) in ("Zs", "Cc")} <= expected
    # Python's `$` matches before a final newline; the pattern still refuses one in the middle or at the end
    assert re.fullmatch(LEAD_ID_PATTERN, "L-1\n") is None and re.fullmatch(LEAD_ID_PATTERN, "L-\U0001f600") is not None


class _AssetLinks(HTMLParser):
    """The URLs a page loads: every <script src> and <link href>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]


_ASSET_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


async def test_docs_pages_load_every_asset_from_the_app_itself(redis_url: str, redis_client: object) -> None:
    """/docs and /redoc work offline: nothing they load comes from another origin, all of it is served here,
    without an API key (a browser opening the docs sends none)."""
    async with api_client(Settings(redis_url=redis_url, api_keys=["s3cret"])) as client:
        home = await client.get("/")
        assert home.status_code == 307 and home.headers["location"] == "/docs"
        for page in ("/docs", "/redoc"):
            response = await client.get(page)
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/html"), page
            assert "http://" not in response.text and "https://" not in response.text, page  # inline scripts too
            parser = _AssetLinks()
            parser.feed(response.text)
            assert any(url.endswith(".js") for url in parser.urls), f"{page} loads no script: {parser.urls}"
            for url in parser.urls:
                absolute = urljoin(str(response.url), url)
                assert urlsplit(absolute).netloc == "leadscore.test", f"{page} loads {url} from another origin"
                asset = await client.get(absolute)
                assert asset.status_code == 200 and asset.content, f"{page}: {url} -> {asset.status_code}"
                kind = _ASSET_TYPES[urlsplit(url).path[urlsplit(url).path.rfind(".") :]]
                assert kind in asset.headers["content-type"], f"{url}: {asset.headers['content-type']}"
        assert (await client.get("/openapi.json")).status_code == 200  # what the pages' scripts fetch
        assert (await client.get("/segments")).status_code == 401  # the docs are open, the data is not


async def test_lead_flags_read_as_fastapi_reads_booleans(redis_backend: RedisBackend) -> None:
    async with api_client(redis_backend.service_settings()) as client:
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


async def test_the_model_registry_over_the_api_needs_admin_and_records_who_activated(
    redis_url: str, redis_client: object
) -> None:
    keys = ["ops:admin", "reader:read"]
    async with api_client(Settings(redis_url=redis_url, api_keys=keys)) as client:
        admin = {"X-API-Key": "ops"}
        assert (await client.get("/models", headers={"X-API-Key": "reader"})).status_code == 403
        listing = (await client.get("/models", headers=admin)).json()
        (serving,) = [m for m in listing["models"] if m["active"]]  # the lifespan registered the shipped model
        assert listing["active"] == serving["version"] and serving["roc_auc"] > 0.5

        shown = await client.get(f"/models/{serving['version']}", headers=admin)
        assert shown.status_code == 200 and shown.json()["version"] == serving["version"]
        assert (await client.get("/models/m-nope", headers=admin)).status_code == 404
        missing = await client.post("/models/m-nope/activate", headers=admin)
        assert missing.status_code == 404 and "GET /models" in missing.json()["message"]

        activated = await client.post(f"/models/{serving['version']}/activate", headers=admin)
        assert activated.status_code == 200, activated.text
        body = activated.json()
        assert body["active"] and body["activated_by"].startswith("API (") and body["activated_at"]
        again = (await client.get("/models", headers=admin)).json()
        (entry,) = [m for m in again["models"] if m["version"] == serving["version"]]
        assert entry["activated_by"] == body["activated_by"] and entry["activated_at"] == body["activated_at"]
