"""The page as a person uses it, in Debian's chromium driven by Playwright, against `leadscore serve` and a consumer
on the real Redis and broker: it asks for a key, shows the live overview, a segment's top leads and its CSV, a lead
with its reasons and score-history chart, and the model's report; on a laptop screen and a phone. Every request the
page makes goes to the app (any other origin fails the test). Screenshots go to LEADSCORE_SCREENSHOTS (the README
shows the ones in docs/screenshots) or to the test's temporary directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Route, sync_playwright

from devtools.simulator import SimulationSpec, simulate_history
from schemas.api import MAX_INGEST_EVENTS
from tests.support import StackNames, stack_env, start_api, start_consumer, wait_until

READ_KEY = "reader"
WRITE = {"X-API-Key": "producer"}
# Rounds of events for the lead the test opens: each round is scored before the next, so its history has points
# and segment changes to draw.
ROUNDS = [
    ["email_open", "page_view"],
    ["email_click", "page_view", "webinar_attend"],
    ["demo_request", "form_fill", "page_view"],
]
WATCHED = "L-page-1"


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: `bash scripts/test.sh` installs it (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def events_for(lead_id: str, kinds: list[str], start: int, hours_ago: float) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "event_id": f"{lead_id}-{start + n}",
            "lead_id": lead_id,
            "type": kind,
            "ts": (now - timedelta(hours=hours_ago - n * 0.01)).isoformat(),
            "properties": {"category": "pricing"} if kind == "page_view" else {},
        }
        for n, kind in enumerate(kinds)
    ]


class PageWatch:
    """What a page did that the test refuses: requests to other origins, script errors."""

    def __init__(self, page: Page, origin: str) -> None:
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.origin = origin

        def only_the_app(route: Route, request: Request) -> None:
            parts = urlsplit(request.url)
            if f"{parts.scheme}://{parts.netloc}" == origin or parts.scheme in ("blob", "data"):
                route.continue_()
            else:
                self.foreign.append(request.url)
                route.abort()

        page.route("**/*", only_the_app)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)

    def check(self) -> None:
        assert not self.foreign, f"the page reached beyond the app: {self.foreign}"
        # 401s before the key is given are the page asking for one: the browser logs them as failed loads
        assert not [e for e in self.errors if "401" not in e], self.errors


def test_the_page_shows_the_overview_a_lead_its_reasons_and_history_a_segment_and_the_model(
    browser: Browser, redis_client: Any, redis_url: str, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    shots = Path(os.environ.get("LEADSCORE_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    names = StackNames.unique(unique_name("page"))
    env = stack_env(redis_url, kafka_bootstrap, names, api_keys=f"{READ_KEY}:read,producer:write")
    consumer, _ = start_consumer(env, tmp_path)
    api, base = start_api(env, tmp_path)
    try:
        # a month of simulated history for a few hundred leads: what the overview and the segments show
        spec = SimulationSpec(leads=300, days=30, start=datetime.now(UTC) - timedelta(days=30.1), seed=11)
        others = list(simulate_history(spec))
        for first in range(0, len(others), MAX_INGEST_EVENTS):
            answer = httpx.post(f"{base}/events", json=others[first : first + MAX_INGEST_EVENTS], headers=WRITE)
            assert answer.status_code == 202 and answer.json()["rejected"] == 0, answer.text
        for n, kinds_of_round in enumerate(ROUNDS):
            batch = events_for(WATCHED, kinds_of_round, n * 10, 3 - n)
            answer = httpx.post(f"{base}/events", json=batch, headers=WRITE, timeout=30)
            assert answer.status_code == 202 and answer.json()["rejected"] == 0, answer.text

            def scored(expected: int = sum(len(r) for r in ROUNDS[: n + 1])) -> bool:
                lead = httpx.get(f"{base}/leads/{WATCHED}", headers={"X-API-Key": READ_KEY}, timeout=5)
                return lead.status_code == 200 and sum(lead.json()["event_counts"].values()) == expected

            wait_until(scored, timeout=60, message=f"round {n + 1} scored")
        leads = 1 + len({event["lead_id"] for event in others})

        page = browser.new_page(viewport={"width": 1280, "height": 900})
        watch = PageWatch(page, base)
        page.goto(f"{base}/ui")
        # no key yet: the page asks for one
        page.locator("#key-form").wait_for(state="visible")
        page.fill("#key-input", READ_KEY)
        page.click("#key-form button[type=submit]")

        page.wait_for_function(f"document.querySelector('#histogram').dataset.total === '{leads}'")
        assert page.locator("#segment-sets .segment").count() >= 4
        assert page.locator("#recent-changes tbody tr").count() >= 5
        assert page.locator("#events-chart").get_attribute("data-points") == "60"
        assert page.locator("#recent-changes tbody tr a").first.inner_text().startswith("L-")
        page.screenshot(path=shots / "overview.png", full_page=True)

        page.click("nav a[data-view=lead]")
        page.fill("#lead-input", WATCHED)
        page.click("#lead-form button")
        page.locator("#lead-reasons li").first.wait_for()
        assert page.locator("#lead-id").inner_text() == WATCHED
        assert "%" in page.locator("#lead-score").inner_text()
        reasons = page.locator("#lead-reasons li").all_inner_texts()
        assert reasons and all(len(sentence) > 10 for sentence in reasons)
        chart = page.locator("#history-chart")
        assert int(chart.get_attribute("data-points") or 0) >= 2
        assert int(chart.get_attribute("data-changes") or 0) >= 1
        events_shown = {row.split("\t")[0]: row for row in page.locator("#lead-events tbody tr").all_inner_texts()}
        assert set(events_shown) == {kind for round_ in ROUNDS for kind in round_}
        page.screenshot(path=shots / "lead.png", full_page=True)

        page.click("nav a[data-view=segments]")
        page.locator("#top-leads tbody tr a").first.wait_for()
        with page.expect_download() as download:
            page.click("#export-csv")
        exported = Path(download.value.path()).read_text().splitlines()
        assert exported[0] == "rank,lead_id,score,last_event_at" and len(exported) > 1
        page.screenshot(path=shots / "segments.png", full_page=True)

        page.click("nav a[data-view=model]")
        page.wait_for_function(
            "[...document.querySelectorAll('#model-report img')].some((img) => img.complete && img.naturalWidth > 0)"
        )
        assert page.locator("#model-metrics tr").count() >= 3
        assert page.locator("#model-report h3").count() >= 3
        page.screenshot(path=shots / "model.png")
        watch.check()
        page.close()

        phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
        phone.add_init_script(f"localStorage.setItem('leadscore.apiKey', '{READ_KEY}')")
        small = phone.new_page()
        small_watch = PageWatch(small, base)
        small.goto(f"{base}/ui#lead/{WATCHED}")
        small.locator("#lead-reasons li").first.wait_for()
        assert small.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        small.screenshot(path=shots / "phone-lead.png")
        small.goto(f"{base}/ui#overview")
        small.wait_for_function(f"document.querySelector('#histogram').dataset.total === '{leads}'")
        assert small.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        small_watch.check()
        phone.close()
    finally:
        api.stop()
        consumer.stop()
