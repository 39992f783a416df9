"""Model lifecycle against real servers: register, activate while serving, refuse a bad model while the old one
keeps serving, rescore, score history; and a user's own event types trained, activated and served."""

from __future__ import annotations

import gzip
import json
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
import yaml

from app.settings import DEFAULT_MODEL_PATH
from app.storage.keys import ACTIVE_MODEL_KEY, model_key
from tests.support import (
    StackNames,
    metric_total,
    produce_events,
    run_leadscore,
    stack_env,
    start_api,
    start_consumer,
    synthetic_events,
    wait_until,
)


def copy_model(target: Path, version: str, rename_feature: str | None = None) -> Path:
    shutil.copytree(DEFAULT_MODEL_PATH, target)
    metadata = json.loads((target / "metadata.json").read_text())
    metadata["version"] = version
    if rename_feature:
        metadata["feature_names"] = [f"{n}_x" if n == rename_feature else n for n in metadata["feature_names"]]
        model = (target / "model.txt").read_text().replace(rename_feature, f"{rename_feature}_x")
        (target / "model.txt").write_text(model)
    (target / "metadata.json").write_text(json.dumps(metadata))
    return target


def served_version(api: str) -> str:
    return str(httpx.get(f"{api}/readyz", timeout=5).json()["model_version"])


def test_activate_while_serving_refuse_a_bad_model_and_rescore(
    redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    names = StackNames.unique(unique_name("models"))
    env = stack_env(redis_url, kafka_bootstrap, names, model_poll_seconds="0.3")
    consumer, consumer_metrics = start_consumer(env, tmp_path)
    api_process, api = start_api(env, tmp_path)
    try:
        events = synthetic_events(40, per_lead=8, seed=41)
        produce_events(kafka_bootstrap, names.events_topic, events)
        leads = sorted({e["lead_id"] for e in events})
        default_version = served_version(api)
        assert run_leadscore(env, "models", "list").stdout.startswith(f"* {default_version}"), (
            "the shipped model is registered and active on first start"
        )
        wait_until(
            lambda: all(httpx.get(f"{api}/leads/{lead}", timeout=5).status_code == 200 for lead in leads),
            timeout=60,
            message="first events scored",
        )

        registered = run_leadscore(env, "models", "register", str(copy_model(tmp_path / "v2", "test-v2")))
        assert registered.returncode == 0, registered.stderr
        activated = run_leadscore(env, "models", "activate", "test-v2")
        assert activated.returncode == 0, activated.stderr
        wait_until(lambda: served_version(api) == "test-v2", timeout=15, message="API switched to test-v2")
        consumer_ready = f"http://127.0.0.1:{consumer_metrics}/readyz"
        wait_until(
            lambda: httpx.get(consumer_ready, timeout=5).json()["model_version"] == "test-v2",
            timeout=30,
            message="the consumer reports test-v2 once it scores with it",
        )
        listing = run_leadscore(env, "models", "list").stdout
        assert "* test-v2" in listing

        # the consumer switched too: a new event is scored by test-v2
        late = {**events[-1], "event_id": "late-1", "ts": datetime.now(UTC).isoformat()}
        produce_events(kafka_bootstrap, names.events_topic, [late])
        wait_until(
            lambda: httpx.get(f"{api}/leads/{late['lead_id']}", timeout=5).json()["model_version"] == "test-v2",
            timeout=30,
            message="consumer scores with test-v2",
        )

        # a model whose features do not match the config is refused at registration, with the feature named
        bad = run_leadscore(env, "models", "register", str(copy_model(tmp_path / "bad", "bad-v3", "email_ctr")))
        assert bad.returncode == 2 and "email_ctr" in bad.stderr
        # and one forced in behind the registry's back is refused by the running processes
        redis_client.hset(model_key("broken-v4"), mapping={"model": "not a model", "metadata": b"{}"})
        redis_client.set(ACTIVE_MODEL_KEY, "broken-v4")
        wait_until(
            lambda: metric_total(f"http://127.0.0.1:{consumer_metrics}/metrics", "leadscore_model_load_failures") >= 1,
            timeout=15,
            message="consumer refused the broken model",
        )
        assert served_version(api) == "test-v2"
        assert httpx.get(f"{api}/leads/{leads[0]}", timeout=5).status_code == 200
        redis_client.set(ACTIVE_MODEL_KEY, "test-v2")

        rescored = run_leadscore(env, "rescore", "--quiet")
        assert rescored.returncode == 0, rescored.stderr
        assert f"rescored {len(leads)} leads" in rescored.stdout
        for lead in leads:
            view = httpx.get(f"{api}/leads/{lead}", timeout=5).json()
            assert view["model_version"] == "test-v2"
            history = httpx.get(f"{api}/leads/{lead}/history", timeout=5).json()["entries"]
            assert history[-1]["model_version"] == default_version and history[-1]["trigger"] == "event"
            assert history[0]["model_version"] == "test-v2"
            assert {entry["trigger"] for entry in history} <= {"event", "rescore", "time"}
        assert httpx.get(f"{api}/leads/nobody/history", timeout=5).status_code == 404
    finally:
        api_process.stop()
        consumer.stop()


def _own_history(path: Path, leads: int, seed: int) -> None:
    """A product-led company's events: its own types, its own conversion type (`subscribed`)."""
    rng = random.Random(seed)
    start = datetime(2026, 6, 1, tzinfo=UTC)
    rows: list[dict[str, Any]] = []

    def add(lead: str, name: str, kind: str, at: datetime, properties: dict[str, str] | None = None) -> None:
        rows.append(
            {"event_id": f"{lead}-{name}", "lead_id": lead, "type": kind, "ts": at, "properties": properties or {}}
        )

    for n in range(leads):
        lead = f"U-{n:05d}"
        intent = rng.random()
        at = start + timedelta(days=rng.uniform(0, 120))
        add(lead, "p", "profile_update", at, {"plan": rng.choice(["free", "team"])})
        for k in range(rng.randint(3, 30)):
            at += timedelta(hours=rng.expovariate(1 / (12 + 60 * (1 - intent))))
            add(
                lead,
                str(k),
                rng.choices(["app_open", "feature_used", "invite_sent"], [5, 3 * intent + 0.2, intent])[0],
                at,
            )
        if rng.random() < intent**2:
            # a burst of invites shortly before subscribing: the signal a model should find
            for j in range(3):
                add(lead, f"i{j}", "invite_sent", at + timedelta(hours=j + 1))
            add(lead, "buy", "subscribed", at + timedelta(days=rng.uniform(1, 5)))
    with gzip.open(path, "wt") as out:
        end = start + timedelta(days=140)  # a history export covers a fixed window
        for row in sorted((r for r in rows if r["ts"] <= end), key=lambda r: r["ts"]):
            out.write(orjson.dumps({**row, "ts": row["ts"].isoformat()}).decode() + "\n")


def test_a_user_trains_activates_and_serves_their_own_event_types(
    redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    config = {
        "features": {
            "conversion_type": "subscribed",
            "profile_type": "profile_update",
            "profile_attributes": ["plan"],
            "counted_types": ["app_open", "feature_used", "invite_sent"],
            "ratios": [{"name": "feature_per_open", "numerator": "feature_used", "denominator": "app_open"}],
            "high_intent": ["invites"],
            "signals": [
                {"name": "opens", "types": ["app_open"], "half_life": "7d", "points": 1},
                {"name": "features", "types": ["feature_used"], "half_life": "7d", "points": 3},
                {"name": "invites", "types": ["invite_sent"], "half_life": "14d", "points": 10},
            ],
        },
        "segments": {
            "stage": [
                {"name": "paying", "when": {"field": "count.subscribed", "op": "gt", "value": 0}},
                {"name": "likely", "when": {"field": "score", "op": "ge", "value": 0.2}},
                {"name": "other", "when": {"all": []}},
            ]
        },
    }
    config_path = tmp_path / "own.yaml"
    config_path.write_text(yaml.safe_dump(config))
    history = tmp_path / "history.jsonl.gz"
    _own_history(history, 2500, seed=3)
    names = StackNames.unique(unique_name("own"))
    env = stack_env(redis_url, kafka_bootstrap, names, config_path=str(config_path), model_poll_seconds="0.3")

    trained = run_leadscore(
        env, "train", "--events", str(history), "--out", str(tmp_path / "own-model"), "--config", str(config_path),
        "--horizon-days", "14", "--version", "own-v1", "--quiet", "--json", timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    summary = orjson.loads(trained.stdout)
    assert summary["version"] == "own-v1" and summary["metrics"]["roc_auc"] > 0.6
    assert run_leadscore(env, "models", "register", str(tmp_path / "own-model")).returncode == 0
    assert run_leadscore(env, "models", "activate", "own-v1").returncode == 0

    consumer, _ = start_consumer(env, tmp_path)
    api_process, api = start_api(env, tmp_path)
    try:
        now = datetime.now(UTC)
        events = [
            {"event_id": f"x{i}", "lead_id": "U-new", "type": kind, "ts": (now - timedelta(minutes=30 - i)).isoformat()}
            for i, kind in enumerate(["app_open", "feature_used", "invite_sent", "invite_sent", "app_open"])
        ]
        produce_events(kafka_bootstrap, names.events_topic, events)
        wait_until(lambda: served_version(api) == "own-v1", timeout=15, message="API serves own-v1")
        view = wait_until(
            lambda: (
                (r := httpx.get(f"{api}/leads/U-new", timeout=5)).status_code == 200
                and r.json()["model_version"] == "own-v1"
                and r.json()
            ),
            timeout=60,
            message="the user's lead scored by their model",
        )
        assert view["event_counts"] == {"app_open": 2, "feature_used": 1, "invite_sent": 2}
        assert view["segments"] == {"stage": view["segment"]} and view["segment"] in {"likely", "other"}
        assert view["features"]["invites_decayed"] > 1.9
        assert any(reason["feature"].startswith(("invites", "features", "opens")) for reason in view["reasons"])
    finally:
        api_process.stop()
        consumer.stop()


def test_services_refuse_to_start_with_a_model_that_does_not_fit_the_config(
    redis_client: redis.Redis, redis_url: str, kafka_bootstrap: str, unique_name: Any, tmp_path: Path
) -> None:
    bad = copy_model(tmp_path / "bad", "bad-v1", rename_feature="active_days")
    env = stack_env(redis_url, kafka_bootstrap, StackNames.unique(unique_name("refuse")), model_path=str(bad))
    for command in (["serve", "--port", "0"], ["consume", "--metrics-port", "0"]):
        refused = run_leadscore(env, *command, timeout=60)
        assert refused.returncode == 2, (command, refused.stderr[-500:])
        assert "active_days" in refused.stderr and "does not match the feature config" in refused.stderr
