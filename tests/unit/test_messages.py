"""Event parsing: the documented format is accepted; anything else becomes a rejection with a reason."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from consumers.messages import ParsedEvent, Rejection, parse_event, parse_message
from models.spec import load_feature_spec
from models.state import LeadState, fold
from schemas.events import Event

SPEC = load_feature_spec()
GOOD = {"event_id": "e-1", "lead_id": "L-1", "type": "email_click", "ts": "2026-11-22T10:00:00Z"}


def test_documented_event_parses_with_both_timestamp_forms() -> None:
    parsed = parse_message(b"L-1", orjson.dumps(GOOD), 65536)
    assert isinstance(parsed, ParsedEvent)  # the documented format takes the fast parse
    epoch = parse_message(b"L-1", orjson.dumps(GOOD | {"ts": parsed.ts}), 65536)
    assert isinstance(epoch, ParsedEvent)
    assert epoch.ts == parsed.ts == 1795341600000
    offset = parse_message(b"L-1", orjson.dumps(GOOD | {"ts": "2026-11-22T11:00:00+01:00"}), 65536)
    assert isinstance(offset, ParsedEvent) and offset.ts == parsed.ts


def test_unknown_types_are_accepted() -> None:
    assert isinstance(parse_message(b"L-1", orjson.dumps(GOOD | {"type": "chat_started"}), 65536), ParsedEvent)


def test_rejections_carry_a_reason() -> None:
    cases = {
        b"{not json": "invalid_json",
        orjson.dumps({k: v for k, v in GOOD.items() if k != "event_id"}): "invalid_event",
        orjson.dumps(GOOD | {"ts": "yesterday"}): "invalid_event",
        orjson.dumps(GOOD | {"ts": "2026-11-22T10:00:00"}): "invalid_event",  # no offset: ambiguous
        orjson.dumps(GOOD | {"ts": True}): "invalid_event",
        orjson.dumps(GOOD | {"properties": [1, 2]}): "invalid_event",
        orjson.dumps(GOOD | {"lead_id": "has space"}): "invalid_event",
    }
    for value, reason in cases.items():
        result = parse_message(b"L-1", value, 65536)
        assert isinstance(result, Rejection), value
        assert result.reason == reason, (value, result)
        assert result.detail
    too_big = parse_message(b"L-1", orjson.dumps(GOOD | {"properties": {"x": "a" * 2000}}), 1024)
    assert isinstance(too_big, Rejection) and too_big.reason == "too_large"
    assert isinstance(wrong_key := parse_message(b"L-2", orjson.dumps(GOOD), 65536), Rejection)
    assert wrong_key.reason == "key_mismatch"
    assert isinstance(no_key := parse_message(None, orjson.dumps(GOOD), 65536), Rejection)
    assert no_key.reason == "key_mismatch"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": json_values | st.text(min_size=1, max_size=30),
        "lead_id": json_values | st.just("L-1"),
        "type": json_values | st.sampled_from(["email_click", "profile_update", "page_view", "x"]),
        "ts": json_values | st.integers(min_value=0, max_value=4_000_000_000_000),
        "properties": json_values | st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    },
)


@settings(max_examples=300, deadline=None)
@given(payload=event_like | json_values, raw=st.binary(max_size=64))
def test_arbitrary_payloads_parse_or_reject_never_raise(payload: object, raw: bytes) -> None:
    for value in (orjson.dumps(payload), raw):
        result = parse_message(b"L-1", value, 65536)
        assert isinstance(result, ParsedEvent | Event | Rejection)
        if not isinstance(result, Rejection):
            state = fold(LeadState(), [result], SPEC)  # the fold takes whatever the parser lets through
            assert state.event_count == 1


# Strings at the edges of Event's rules: whitespace and control characters anywhere (a final newline too), other
# scripts, lengths around the limits, and characters JSON escapes.
edge_strings = st.text(
    alphabet=st.sampled_from('aZ09_.:-é\n\t \x00\x1f\x7f\x85\xa0\u2028\u3000\ufeff"\\/'), max_size=6
) | st.builds(
    lambda c, n, tail: c * n + tail,
    st.sampled_from("aé"),
    st.integers(62, 66) | st.integers(198, 202),
    st.sampled_from(["", "\n", " "]),
)
edge_ts = (
    st.integers(-(2**64), 2**64)
    | st.sampled_from([0, 253_402_300_799_999, 253_402_300_799_999 + 1, -1, True, False, None])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        [
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00.123456789+05:30",
            "2026-11-22 10:00:00+00:00",
            "2026-11-22T10:00:00",
            "20261122T100000Z",
            "2026-11-22",
            "9999-12-31T23:59:59.999Z",
            "0001-01-01T00:00Z",
            "1969-12-31T23:59:59.999Z",
            "2026-11-22T10:00:00z",
            "2026-02-30T10:00:00Z",
            "",
        ]
    )
)


def _mostly(valid: object, edge: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """A field's valid value two times in three, an edge value otherwise: most payloads are near-valid events."""
    return st.one_of(st.just(valid), st.just(valid), edge)


edge_event = st.fixed_dictionaries(
    {
        "event_id": _mostly("e-1", edge_strings | json_values),
        "lead_id": _mostly("L-1", edge_strings | json_values),
        "type": _mostly("email_click", edge_strings | st.just("a:b.c-d_e") | json_values),
        "ts": _mostly(1_795_341_600_000, edge_ts | json_values),
    },
    optional={
        "properties": st.dictionaries(edge_strings, json_values, max_size=3) | json_values,
        "extra": json_values,
    },
)


def _outcome(parse: object, value: bytes) -> object:
    try:
        event = parse(value)  # type: ignore[operator]
    except ValidationError:
        return "rejected"
    return (event.event_id, event.lead_id, event.type, event.ts, dict(event.properties))


@settings(max_examples=1500, deadline=None)
@given(payload=edge_event, ascii_only=st.booleans())
def test_the_fast_parse_accepts_exactly_what_event_accepts_with_the_same_values(
    payload: dict[str, object], ascii_only: bool
) -> None:
    # The standard library's encoder: orjson refuses integers past 64 bits, which producers may still send.
    value = json.dumps(payload, ensure_ascii=ascii_only).encode()
    assert _outcome(parse_event, value) == _outcome(Event.model_validate_json, value)


@pytest.mark.parametrize(
    "value",
    [
        b'{"event_id":"e","lead_id":"L-1","type":"x","ts":1,"lead_id":"L 2"}',  # a repeated key
        b'{"event_id":"e","lead_id":"L-1","type":"x","ts":1,"lead_id":"L-2"}',
        b'{"event_id":"\\ud800","lead_id":"L-1","type":"x","ts":1}',  # a lone surrogate
        b'{"event_id":"e","lead_id":"L-1","type":"x","ts":1,"properties":{"n":1e400,"k":1,"k":2}}',
        b'{"event_id":"e","lead_id":"L-1","type":"x","ts":1.0,"properties":{"big":123456789012345678901234567890}}',
        b'{"event_id":"e","lead_id":"L-1","type":"x","ts":1e3}',
        b'{"event_id":"e","lead_id":"L-1","type":"x","ts":"1"}',
        b' {"event_id":"e","lead_id":"L-1","type":"x","ts":1} ',
        b'{"event_id":"e","lead_id":"L-1\\n","type":"x","ts":1}',  # Python's `$` would match before the newline
        b'{"event_id":"e","lead_id":"L-1","type":"x\\n","ts":1}',
        b'{"event_id":"e","lead_id":"L-1","type":"x","ts":1}x',
    ],
)
def test_the_fast_parse_agrees_with_event_on_json_corners(value: bytes) -> None:
    assert _outcome(parse_event, value) == _outcome(Event.model_validate_json, value)
