"""LEADSCORE_WEBHOOKS: what a subscription must be, errors that name the entry but never echo a secret, and which
changes a subscription's filters let through."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from app.settings import SettingsInvalid, WebhookSubscription, load_settings
from consumers.webhook_delivery import safe_url, wants
from schemas.changes import LeadErased, SegmentChange, Trigger

SECRET = "whsec-unit-0123456789abcdef"


def entry(**values: Any) -> dict[str, Any]:
    return {"name": "crm", "url": "https://crm.example.com/hooks?token=t0k3n", "secret": SECRET} | values


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADSCORE_WEBHOOKS", raising=False)


def settings_error(monkeypatch: pytest.MonkeyPatch, subscriptions: Any) -> str:
    monkeypatch.setenv("LEADSCORE_WEBHOOKS", orjson.dumps(subscriptions).decode())
    with pytest.raises(SettingsInvalid) as refused:
        load_settings()
    return str(refused.value)


def test_subscriptions_come_from_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADSCORE_WEBHOOKS", orjson.dumps([entry(segments=["hot"]), entry(name="etl")]).decode())
    crm, etl = load_settings().webhooks
    assert (crm.name, crm.segments, crm.segment_sets) == ("crm", frozenset({"hot"}), None)
    assert etl.secret.get_secret_value() == SECRET
    assert SECRET not in repr(crm)  # a subscription logged by accident shows no secret


@pytest.mark.parametrize(
    ("subscriptions", "expected"),
    [
        (
            [entry(url="ftp://crm.example.com/hooks")],
            "LEADSCORE_WEBHOOKS[0].url: URL scheme should be 'http' or 'https'",
        ),
        ([entry(secret="short")], "LEADSCORE_WEBHOOKS[0].secret: the secret is shorter than 16 characters"),
        ([entry(name="has space")], "LEADSCORE_WEBHOOKS[0].name: name 'has space': use 1-100 letters"),
        ([entry(), entry(url="https://other.example.com")], "subscription names ['crm'] are used more than once"),
        ([entry(segment="hot")], "LEADSCORE_WEBHOOKS[0].segment: Extra inputs are not permitted"),
        ([{"name": "crm", "url": "https://crm.example.com"}], "LEADSCORE_WEBHOOKS[0].secret: Field required"),
    ],
)
def test_a_bad_subscription_is_named_and_its_values_never_echoed(
    monkeypatch: pytest.MonkeyPatch, subscriptions: list[dict[str, Any]], expected: str
) -> None:
    message = settings_error(monkeypatch, subscriptions)
    assert expected in message
    assert SECRET not in message and "t0k3n" not in message


def test_json_that_does_not_parse_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADSCORE_WEBHOOKS", f'[{{"name": "crm", "secret": "{SECRET}"')
    with pytest.raises(SettingsInvalid) as refused:
        load_settings()
    assert "webhooks" in str(refused.value) and SECRET not in str(refused.value)


def test_the_longest_backoff_is_not_below_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsInvalid, match="LEADSCORE_WEBHOOK_BACKOFF_MAX_SECONDS \\(1\\) is below"):
        load_settings(webhook_backoff_seconds=2, webhook_backoff_max_seconds=1)


def change(segment_set: str, from_segment: str | None, to_segment: str) -> SegmentChange:
    return SegmentChange(
        change_id="c",
        lead_id="L-1",
        segment_set=segment_set,
        from_segment=from_segment,
        to_segment=to_segment,
        score=0.5,
        at=datetime.now(UTC),
        model_version="m",
        trigger=Trigger.EVENT,
    )


def test_filters_match_the_set_and_either_end_of_a_change() -> None:
    everything = WebhookSubscription.model_validate(entry())
    hot_tier = WebhookSubscription.model_validate(entry(segment_sets=["tier"], segments=["hot"]))
    assert wants(everything, change("fit", None, "enterprise"))
    assert wants(hot_tier, change("tier", "warm", "hot"))  # entering
    assert wants(hot_tier, change("tier", "hot", "warm"))  # leaving
    assert not wants(hot_tier, change("tier", "warm", "cold"))
    assert not wants(hot_tier, change("tier", None, "cold"))  # a new lead placed elsewhere
    assert not wants(hot_tier, change("lifecycle", "warm", "hot"))  # same name, another set


def test_an_erasure_reaches_every_subscription_whatever_its_filters() -> None:
    now = datetime.now(UTC)
    erased = LeadErased(change_id="e", lead_id="L-1", segments={}, requested_at=now, at=now)
    nothing_matches = WebhookSubscription.model_validate(entry(segment_sets=["none"], segments=["none"]))
    assert wants(nothing_matches, erased)


def test_logs_show_a_url_without_its_query_or_user_info() -> None:
    assert (
        safe_url("https://user:pw@crm.example.com:8443/hooks/l?token=t0k3n#x") == "https://crm.example.com:8443/hooks/l"
    )
