"""End to end: events produced by an independent Kafka client -> consumer -> Redis -> API.

Real redis-server and Kafka-protocol broker (session fixtures), the real `leadscore consume` and
`leadscore serve` processes; expectations are recomputed here from the produced events.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from models.scoring import Scorer, load_scorer
from models.state import LeadState, fold
from models.vector import feature_values
from schemas.events import Event
from tests.support import (
    StackNames,
    expected_counts,
    produce_events,
    produce_raw,
    read_topic,
    stack_env,
    start_api,
    start_consumer,
    synthetic_events,
    wait_until,
)

LEADS = 300


@dataclass
class RunningStack:
    api: str
    consumer_metrics: str
    names: StackNames
    events: list[dict[str, Any]]
    kafka: str


@pytest.fixture(scope="module")
def stack(redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    names = StackNames.unique(f"e2e-{id(tmp_path_factory)}")
    env = stack_env(redis_url, kafka_bootstrap, names)
    logs = tmp_path_factory.mktemp("e2e-logs")
    consumer, metrics_port = start_consumer(env, logs)
    try:
        api_process, api = start_api(env, logs)
        try:
            events = synthetic_events(LEADS, per_lead=12, seed=3)
            produce_events(kafka_bootstrap, names.events_topic, events)
            yield RunningStack(api, f"http://127.0.0.1:{metrics_port}/metrics", names, events, kafka_bootstrap)
        finally:
            api_process.stop()
    finally:
        consumer.stop()


def _lead(api: str, lead_id: str) -> dict[str, Any]:
    response = httpx.get(f"{api}/leads/{lead_id}", timeout=5)
    return response.json() if response.status_code == 200 else {}


@pytest.fixture(scope="module")
def served(stack: RunningStack) -> dict[str, dict[str, Any]]:
    """Every lead as the API serves it, once all produced events are counted."""
    expected = expected_counts(stack.events)

    def all_counted() -> dict[str, dict[str, Any]] | None:
        with httpx.Client(timeout=5) as client:
            views = {lead: client.get(f"{stack.api}/leads/{lead}").json() for lead in expected}
        done = all(views[lead].get("event_counts") == dict(counts) for lead, counts in expected.items())
        return views if done else None

    result: dict[str, dict[str, Any]] = wait_until(all_counted, timeout=60, interval=0.5, message="all events counted")
    return result


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    settings = Settings()
    return load_scorer(settings.model_path, settings.service_config.features)


def test_every_lead_has_exact_counts_a_score_segment_and_model(
    stack: RunningStack, served: dict[str, dict[str, Any]], scorer: Scorer
) -> None:
    segment_sets = Settings().service_config.segments
    assert len(served) == LEADS
    for lead_id, view in served.items():
        assert view["lead_id"] == lead_id
        assert 0.0 <= view["score"] <= 1.0
        assert view["segment"] == view["segments"][segment_sets.primary]
        assert set(view["segments"]) == set(segment_sets.sets)
        for segment_set, segment in view["segments"].items():
            assert segment in segment_sets[segment_set].names
        assert view["model_version"] == scorer.version
        assert view["scored_at"] is not None and view["last_event_at"] is not None
        assert set(view["profile"]) == {"industry", "country"}


def test_scores_and_segments_equal_an_independent_replay(
    stack: RunningStack, served: dict[str, dict[str, Any]], scorer: Scorer
) -> None:
    config = Settings().service_config
    by_lead: dict[str, list[Event]] = {}
    for raw in stack.events:
        by_lead.setdefault(raw["lead_id"], []).append(Event.model_validate(raw))
    scores = []
    for lead_id, events in by_lead.items():
        view = served[lead_id]
        scored_ms = int(datetime.fromisoformat(view["scored_at"]).timestamp() * 1000 + 0.5)
        state = fold(LeadState(), events, config.features)
        values = feature_values(state, scored_ms, config.features)
        expected_score = float(scorer.predict(scorer.layout.encode([values]))[0])
        assert view["score"] == pytest.approx(expected_score, abs=1e-12), lead_id
        assert view["features"] == pytest.approx(values, nan_ok=True)
        scores.append(view["score"])
    assert len(set(scores)) > 10, "scores should differ between leads"


def test_unknown_lead_is_a_json_404(stack: RunningStack) -> None:
    response = httpx.get(f"{stack.api}/leads/nobody-here", timeout=5)
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "not_found" and "nobody-here" in body["message"]


def test_segments_sizes_and_ranked_pages(stack: RunningStack, served: dict[str, dict[str, Any]]) -> None:
    listing = httpx.get(f"{stack.api}/segments", timeout=5).json()["sets"]
    sizes = {(s["name"], segment["name"]): segment["size"] for s in listing for segment in s["segments"]}
    by_segment: dict[tuple[str, str], set[str]] = {}
    for lead_id, view in served.items():
        for segment_set, segment in view["segments"].items():
            by_segment.setdefault((segment_set, segment), set()).add(lead_id)
    assert sizes == {key: len(by_segment.get(key, set())) for key in sizes}
    assert sum(size for (segment_set, _), size in sizes.items() if segment_set == "tier") == LEADS
    for (segment_set, name), members in by_segment.items():
        seen: list[tuple[str, float]] = []
        cursor = None
        for _ in range(LEADS):  # bounded walk
            params: dict[str, str | int] = {"limit": 7} | ({"cursor": cursor} if cursor else {})
            page = httpx.get(f"{stack.api}/segments/{segment_set}/{name}/leads", params=params, timeout=5).json()
            seen.extend((lead["lead_id"], lead["score"]) for lead in page["leads"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert {lead for lead, _ in seen} == members
        assert len(seen) == len(members)
        assert [score for _, score in seen] == sorted((score for _, score in seen), reverse=True)
        assert all(score == served[lead]["score"] for lead, score in seen)


def test_bad_requests_get_json_errors(stack: RunningStack) -> None:
    cases = [
        ("/segments/nope/leads", 404),
        ("/segments/hot/leads?limit=0", 422),
        ("/segments/hot/leads?limit=abc", 422),
        ("/segments/hot/leads?cursor=not-a-cursor", 422),
    ]
    for path, status in cases:
        response = httpx.get(f"{stack.api}{path}", timeout=5)
        assert response.status_code == status, path
        assert response.json()["message"], path


def test_invalid_messages_go_to_the_dlq_with_reason_and_origin(stack: RunningStack, served: dict[str, Any]) -> None:
    bad = [(b"L-00001", b"{broken"), (b"L-00002", orjson.dumps({"lead_id": "L-00002", "type": "x"}))]
    produce_raw(stack.kafka, stack.names.events_topic, bad)
    dead = read_topic(stack.kafka, stack.names.dlq_topic, expected=2, timeout=30)
    assert sorted(r.value for r in dead if r.value) == sorted(v for _, v in bad)
    # the good events around them were not held up: the leads still serve their exact counts
    assert _lead(stack.api, "L-00001")["event_counts"] == served["L-00001"]["event_counts"]


def _metric_names(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


def test_metrics_parse_and_cover_the_pipeline(stack: RunningStack, served: dict[str, Any]) -> None:
    api_metrics = httpx.get(f"{stack.api}/metrics", timeout=5)
    assert api_metrics.status_code == 200
    assert {"leadscore_http_request_seconds", "leadscore_segment_size"} <= _metric_names(api_metrics.text)
    consumer_text = httpx.get(stack.consumer_metrics, timeout=5).text
    names = _metric_names(consumer_text)
    for name in (
        "leadscore_events_consumed",
        "leadscore_invalid_events",
        "leadscore_batch_size",
        "leadscore_batch_stage_seconds",
        "leadscore_event_to_scored_seconds",
        "leadscore_consumer_lag",
        "leadscore_score",
        "leadscore_segment_transitions",
        "leadscore_model_info",
        "leadscore_redis_errors",
        "leadscore_segment_changes_published",
        "leadscore_swept_leads",
    ):
        assert name in names, name
    consumed = {
        sample.labels["type"]: sample.value
        for family in text_string_to_metric_families(consumer_text)
        if family.name == "leadscore_events_consumed"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    produced: dict[str, int] = {}
    for event in stack.events:
        produced[event["type"]] = produced.get(event["type"], 0) + 1
    assert consumed == produced


def test_health_and_readiness(stack: RunningStack) -> None:
    assert httpx.get(f"{stack.api}/healthz", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(f"{stack.api}/readyz", timeout=5).json()
    assert ready["status"] == "ready" and ready["redis"] is True and ready["model_version"]


def test_openapi_docs_are_served(stack: RunningStack) -> None:
    assert httpx.get(f"{stack.api}/docs", timeout=5).status_code == 200
    paths = httpx.get(f"{stack.api}/openapi.json", timeout=5).json()["paths"]
    assert {"/leads/{lead_id}", "/segments", "/segments/{segment}/leads", "/healthz", "/readyz"} <= set(paths)
    assert {"/segments/{segment_set}/{segment}/leads", "/leads/batch-get"} <= set(paths)


def test_reasons_add_up_to_the_model_output(
    stack: RunningStack, served: dict[str, dict[str, Any]], scorer: Scorer
) -> None:
    for lead_id in list(served)[:20]:
        view = _lead(stack.api, lead_id)
        matrix = scorer.layout.encode([view["features"]])
        raw = float(scorer.booster.predict(matrix, raw_score=True)[0])
        assert view["raw_score"] == pytest.approx(raw, abs=1e-9)
        reasons = view["reasons"]
        assert reasons and all(r["sentence"] and r["feature"] in view["features"] for r in reasons)
        positive = [r["contribution"] for r in reasons if r["contribution"] > 0]
        assert positive == sorted(positive, reverse=True)
        assert float(scorer.predict(matrix)[0]) == pytest.approx(view["score"], abs=1e-12)
    plain = httpx.get(f"{stack.api}/leads/{lead_id}", params={"reasons": "false"}, timeout=5).json()
    assert plain["reasons"] is None


def test_fresh_score_is_labelled_and_as_of_now(stack: RunningStack, served: dict[str, dict[str, Any]]) -> None:
    lead_id = next(iter(served))
    before = datetime.now(UTC)
    view = httpx.get(f"{stack.api}/leads/{lead_id}", params={"fresh": "true"}, timeout=5).json()
    current = view["current"]
    assert datetime.fromisoformat(current["as_of"]) >= before.replace(microsecond=0) - timedelta(seconds=1)
    assert 0.0 <= current["score"] <= 1.0 and set(current["segments"]) == set(view["segments"])
    assert view["score"] == served[lead_id]["score"]  # the stored score is unchanged by a fresh read
    assert httpx.get(f"{stack.api}/leads/{lead_id}", timeout=5).json()["current"] is None


def test_batch_get_and_filters(stack: RunningStack, served: dict[str, dict[str, Any]]) -> None:
    wanted = [*list(served)[:5], "nobody", next(iter(served))]
    body = httpx.post(f"{stack.api}/leads/batch-get", json={"lead_ids": wanted}, timeout=5).json()
    assert [v["lead_id"] for v in body["leads"]] == list(served)[:5]
    assert body["missing"] == ["nobody"]
    assert body["leads"][0]["event_counts"] == served[wanted[0]]["event_counts"]
    too_many = httpx.post(f"{stack.api}/leads/batch-get", json={"lead_ids": [f"L-{i}" for i in range(501)]}, timeout=5)
    assert too_many.status_code == 422 and too_many.json()["message"]

    in_fit = {lead: v for lead, v in served.items() if v["segments"]["fit"] == "unknown"}
    threshold = sorted(v["score"] for v in in_fit.values())[len(in_fit) // 2]
    page = httpx.get(
        f"{stack.api}/segments/fit/unknown/leads", params={"min_score": threshold, "limit": 1000}, timeout=5
    ).json()
    assert {x["lead_id"] for x in page["leads"]} == {lead for lead, v in in_fit.items() if v["score"] >= threshold}
    since = sorted(v["last_event_at"] for v in in_fit.values())[len(in_fit) // 2]
    page = httpx.get(
        f"{stack.api}/segments/fit/unknown/leads", params={"active_since": since, "limit": 1000}, timeout=5
    ).json()
    assert {x["lead_id"] for x in page["leads"]} == {lead for lead, v in in_fit.items() if v["last_event_at"] >= since}
