"""The synthetic event generator: deterministic, well-formed, and realistic enough to train on."""

from __future__ import annotations

import gzip
import itertools
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools.simulator import (
    COMPANY_SIZES,
    DAY_MS,
    KNOWN_EVENT_TYPES,
    PAGE_CATEGORIES,
    UNKNOWN_EVENT_TYPES,
    SimulationSpec,
    epoch_ms,
    live_events,
    rfc3339_ms,
    simulate_history,
    write_history,
)

Event = dict[str, Any]
RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
POPULATION = SimulationSpec(leads=2000, days=90.0, seed=7)


def ts_ms(event: Event) -> int:
    return epoch_ms(datetime.fromisoformat(event["ts"]))


@pytest.fixture(scope="module")
def history() -> list[Event]:
    return list(simulate_history(POPULATION))


@pytest.fixture(scope="module")
def by_lead(history: list[Event]) -> dict[str, list[Event]]:
    leads: dict[str, list[Event]] = defaultdict(list)
    for event in history:
        leads[event["lead_id"]].append(event)
    return leads


def test_same_seed_gives_the_same_events_and_another_seed_different_ones() -> None:
    spec = SimulationSpec(leads=150, days=30.0, seed=3)
    first = list(simulate_history(spec))
    assert first == list(simulate_history(spec))
    assert first != list(simulate_history(SimulationSpec(leads=150, days=30.0, seed=4)))


def test_a_leads_story_does_not_depend_on_the_population_size() -> None:
    def lead_one(leads: int) -> list[Event]:
        spec = SimulationSpec(leads=leads, days=30.0, seed=5)
        return [event for event in simulate_history(spec) if event["lead_id"] == "L-000001"]

    assert lead_one(10) == lead_one(40)


def test_history_is_lazy() -> None:
    events = simulate_history(POPULATION)
    assert isinstance(events, Iterator)
    assert next(events)["type"] == "profile_update"


def test_events_are_in_wire_format_and_ascending_time(history: list[Event]) -> None:
    start_ms = epoch_ms(POPULATION.start)
    end_ms = start_ms + int(POPULATION.days * DAY_MS)
    previous = start_ms
    for event in history:
        assert list(event) == ["event_id", "lead_id", "type", "ts", "properties"]
        assert all(isinstance(event[key], str) for key in ("event_id", "lead_id", "type", "ts"))
        assert isinstance(event["properties"], dict)
        assert re.fullmatch(r"L-\d{6}", event["lead_id"])
        assert RFC3339_MS.match(event["ts"]), event["ts"]
        ts = ts_ms(event)
        assert previous <= ts < end_ms
        previous = ts
    assert len({event["event_id"] for event in history}) == len(history)


def test_events_validate_against_the_service_schema(history: list[Event]) -> None:
    from schemas.events import Event as WireEvent

    for event in history[::97]:
        assert WireEvent.model_validate(event).ts == ts_ms(event)


def test_only_documented_types_plus_a_few_unknown_ones(history: list[Event]) -> None:
    counts = Counter(event["type"] for event in history)
    assert set(counts) <= set(KNOWN_EVENT_TYPES) | set(UNKNOWN_EVENT_TYPES)
    assert set(KNOWN_EVENT_TYPES) <= set(counts)
    unknown_share = sum(counts[kind] for kind in UNKNOWN_EVENT_TYPES) / len(history)
    assert 0.002 < unknown_share < 0.01


def test_every_lead_starts_with_a_full_profile(by_lead: dict[str, list[Event]]) -> None:
    assert len(by_lead) == POPULATION.leads
    for events in by_lead.values():
        first = events[0]
        assert first["type"] == "profile_update"
        profile = first["properties"]
        assert set(profile) == {"industry", "company_size", "country", "job_title", "lead_source"}
        assert profile["company_size"] in COMPANY_SIZES
        assert re.fullmatch(r"[A-Z]{2}", profile["country"])
        assert profile["lead_source"] in {"organic", "paid_search", "webinar", "referral", "event", "outbound"}


def test_event_properties_carry_what_features_need(history: list[Event]) -> None:
    for event in history:
        kind, properties = event["type"], event["properties"]
        if kind == "page_view":
            assert properties["category"] in PAGE_CATEGORIES
            assert properties["url"].startswith("https://")
        elif kind in ("email_send", "email_open", "email_unsubscribe", "email_bounce"):
            assert properties["campaign"]
        elif kind == "email_click":
            assert properties["campaign"] and properties["link"].startswith("https://")
        elif kind == "form_fill":
            assert properties["form"] in {"contact", "newsletter", "ebook"}
        elif kind == "converted":
            assert properties["plan"] in {"starter", "pro", "enterprise"} and properties["amount"] > 0


def test_conversion_rate_is_plausible(by_lead: dict[str, list[Event]]) -> None:
    converted = sum(any(event["type"] == "converted" for event in events) for events in by_lead.values())
    assert 0.05 <= converted / POPULATION.leads <= 0.15


def test_a_lead_is_silent_after_converting(by_lead: dict[str, list[Event]]) -> None:
    for events in by_lead.values():
        kinds = [event["type"] for event in events]
        if "converted" in kinds:
            assert kinds.count("converted") == 1
            assert kinds[-1] == "converted"


def test_converters_show_buying_signals_in_the_two_weeks_before(by_lead: dict[str, list[Event]]) -> None:
    def signals_before(events: list[Event], until_ms: int) -> int:
        window = range(until_ms - 14 * DAY_MS, until_ms)
        return sum(
            ts_ms(event) in window
            and (
                event["type"] == "demo_request"
                or (event["type"] == "page_view" and event["properties"]["category"] == "pricing")
            )
            for event in events
        )

    converters, others = [], []
    for events in by_lead.values():
        if events[-1]["type"] == "converted":
            converters.append(signals_before(events, ts_ms(events[-1])))
        else:
            others.append(signals_before(events, ts_ms(events[-1]) + 1))
    converter_mean = sum(converters) / len(converters)
    other_mean = sum(others) / len(others)
    assert converter_mean > 2 * other_mean
    # ...but not trivially: some converters show no such signal at all.
    assert 0 < sum(count == 0 for count in converters) < len(converters) / 2


def test_no_email_is_sent_after_an_unsubscribe_or_a_bounce(by_lead: dict[str, list[Event]]) -> None:
    opted_out = 0
    for events in by_lead.values():
        stopped = False
        for event in events:
            if event["type"] == "email_send":
                assert not stopped, f"{event['event_id']} sent after an unsubscribe or bounce"
            elif event["type"] in ("email_unsubscribe", "email_bounce"):
                stopped = True
        opted_out += stopped
    assert opted_out > 0


def test_leads_are_created_across_the_period(by_lead: dict[str, list[Event]]) -> None:
    start_ms = epoch_ms(POPULATION.start)
    created_week = Counter((ts_ms(events[0]) - start_ms) // (7 * DAY_MS) for events in by_lead.values())
    assert len(created_week) >= 12
    assert max(created_week.values()) < 0.15 * POPULATION.leads


@pytest.mark.parametrize("name", ["history.jsonl", "history.jsonl.gz"])
def test_write_history_round_trips(tmp_path: Path, name: str) -> None:
    spec = SimulationSpec(leads=60, days=20.0, seed=11)
    path = tmp_path / name
    count = write_history(spec, path)
    opener: Callable[[Path], Any] = gzip.open if name.endswith(".gz") else Path.open
    with opener(path) as lines:
        written = [orjson.loads(line) for line in lines]
    assert count == len(written) > 0
    assert written == list(simulate_history(spec))


def test_live_events_are_stamped_with_the_injected_now() -> None:
    spec = SimulationSpec(leads=4, days=10.0, seed=2)
    moments = (datetime(2026, 11, 22, 10, 0, tzinfo=UTC) + timedelta(milliseconds=250 * n) for n in itertools.count())
    stamped: list[datetime] = []

    def now() -> datetime:
        stamped.append(next(moments))
        return stamped[-1]

    history = list(simulate_history(spec))
    live = list(itertools.islice(live_events(spec, now=now), 2 * len(history) + 5))

    assert [event["ts"] for event in live] == [rfc3339_ms(epoch_ms(moment)) for moment in stamped]
    first_pass = live[: len(history)]
    assert [(e["lead_id"], e["type"], e["properties"]) for e in first_pass] == [
        (e["lead_id"], e["type"], e["properties"]) for e in history
    ]
    # The stream goes on with new leads rather than repeating event ids.
    assert {event["lead_id"] for event in live[len(history) :]}.isdisjoint(e["lead_id"] for e in history)
    assert len({event["event_id"] for event in live}) == len(live)


def test_live_events_default_clock_is_close_to_now() -> None:
    before = datetime.now(UTC)
    event = next(live_events(SimulationSpec(leads=3, days=5.0)))
    assert abs(datetime.fromisoformat(event["ts"]) - before) < timedelta(seconds=5)


def test_bad_specs_are_rejected_with_a_reason() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SimulationSpec(start=datetime(2026, 8, 1))
    with pytest.raises(ValueError, match="days"):
        SimulationSpec(days=0)
    with pytest.raises(ValueError, match="leads"):
        live_events(SimulationSpec(leads=0))


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 8, 1, tzinfo=UTC),
        datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC),
        datetime(2028, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
    ],
)
def test_rfc3339_ms_formats_utc_with_milliseconds(moment: datetime) -> None:
    text = rfc3339_ms(epoch_ms(moment))
    assert RFC3339_MS.match(text)
    assert datetime.fromisoformat(text) == moment
