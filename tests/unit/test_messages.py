"""Event parsing: the documented format is accepted; anything else becomes a rejection with a reason."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.messages import Rejection, parse_message
from models.spec import load_feature_spec
from models.state import LeadState, fold
from schemas.events import Event

SPEC = load_feature_spec()
GOOD = {"event_id": "e-1", "lead_id": "L-1", "type": "email_click", "ts": "2026-11-22T10:00:00Z"}


def test_documented_event_parses_with_both_timestamp_forms() -> None:
    parsed = parse_message(b"L-1", orjson.dumps(GOOD), 65536)
    assert isinstance(parsed, Event)
    epoch = parse_message(b"L-1", orjson.dumps(GOOD | {"ts": parsed.ts}), 65536)
    assert isinstance(epoch, Event)
    assert epoch.ts == parsed.ts == 1795341600000
    offset = parse_message(b"L-1", orjson.dumps(GOOD | {"ts": "2026-11-22T11:00:00+01:00"}), 65536)
    assert isinstance(offset, Event) and offset.ts == parsed.ts


def test_unknown_types_are_accepted() -> None:
    assert isinstance(parse_message(b"L-1", orjson.dumps(GOOD | {"type": "chat_started"}), 65536), Event)


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
        assert isinstance(result, Event | Rejection)
        if isinstance(result, Event):
            state = fold(LeadState(), [result], SPEC)  # the fold takes whatever the parser lets through
            assert state.event_count == 1
