"""Segment rules: data, first match wins, all/any, missing values, bad rules refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.segments import LeadFacts, SegmentRules, SegmentSets
from models.spec import read_config_file


def facts(score: float, hours: float | None = 1.0, converted: int = 0, country: str | None = None) -> LeadFacts:
    profile = {"country": country} if country else {}
    return LeadFacts(score, {"hours_since_last_event": hours}, profile, {"converted": converted})


@pytest.fixture(scope="module")
def default_rules() -> SegmentRules:
    return SegmentSets.from_config(read_config_file()["segments"])["tier"]


def test_default_rules_in_order(default_rules: SegmentRules) -> None:
    assert default_rules.names == ["customer", "hot", "warm", "dormant", "cold"]
    assert default_rules.assign(facts(0.9, converted=1)) == "customer"
    assert default_rules.assign(facts(0.9, hours=10)) == "hot"
    assert default_rules.assign(facts(0.9, hours=24 * 10)) == "warm"  # likely but quiet for 10 days
    assert default_rules.assign(facts(0.12)) == "warm"
    assert default_rules.assign(facts(0.01, hours=24 * 40)) == "dormant"
    assert default_rules.assign(facts(0.01)) == "cold"
    assert default_rules.assign(facts(0.01, hours=None)) == "cold"  # no value: no comparison matches


def test_any_in_and_exists() -> None:
    rules = SegmentRules.from_config(
        [
            {
                "name": "emea",
                "when": {
                    "any": [
                        {"field": "profile.country", "op": "in", "value": ["DE", "FR"]},
                        {"all": [{"field": "profile.country", "op": "eq", "value": "GB"}]},
                    ]
                },
            },
            {"name": "known", "when": {"field": "profile.country", "op": "exists"}},
            {"name": "rest", "when": {"all": []}},
        ]
    )
    assert rules.assign(facts(0.5, country="FR")) == "emea"
    assert rules.assign(facts(0.5, country="GB")) == "emea"
    assert rules.assign(facts(0.5, country="US")) == "known"
    assert rules.assign(facts(0.5)) == "rest"


def test_last_rule_is_the_fallback() -> None:
    rules = SegmentRules.from_config([{"name": "high", "when": {"field": "score", "op": "gt", "value": 0.5}}])
    assert rules.assign(facts(0.1)) == "high"


@pytest.mark.parametrize(
    "bad",
    [
        [{"name": "x", "when": {"field": "score", "op": "like", "value": 1}}],
        [{"name": "x", "when": {"field": "__import__('os')", "op": "eq", "value": 1}}],
        [{"name": "x", "when": {"field": "score", "op": "in", "value": 3}}],
        [{"name": "x", "when": {"field": "score", "op": "gt", "value": 1, "all": []}}],
        [{"name": "Bad Name", "when": {"all": []}}],
    ],
)
def test_bad_rules_are_refused_with_a_message(bad: list[dict[str, object]]) -> None:
    with pytest.raises(ValidationError):
        SegmentRules.from_config(bad)


def test_duplicate_and_empty_rule_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        SegmentRules.from_config([{"name": "a", "when": {"all": []}}, {"name": "a", "when": {"all": []}}])
    with pytest.raises(ValueError, match="at least one"):
        SegmentRules.from_config([])


def test_hysteresis_keeps_a_threshold_hugging_lead_in_place(default_rules: SegmentRules) -> None:
    # hot: enter at >= 0.30, stay while >= 0.27 (shipped config)
    wobble = [0.31, 0.29, 0.28, 0.295, 0.275, 0.30, 0.285, 0.271]
    current = default_rules.assign(facts(wobble[0]))
    assert current == "hot"
    changes = 0
    for score in wobble[1:]:
        nxt = default_rules.assign(facts(score), current)
        changes += nxt != current
        current = nxt
    assert changes == 0
    assert default_rules.assign(facts(0.26), "hot") == "warm"  # below the band: it leaves
    assert default_rules.assign(facts(0.29), "warm") == "warm"  # inside the band from below: it does not enter


def test_segment_sets_assign_independently() -> None:
    sets = SegmentSets.from_config(read_config_file()["segments"])
    assert sets.primary == "tier"
    assigned = sets.assign(
        LeadFacts(0.5, {"hours_since_last_event": 1.0, "days_since_first_event": 2.0}, {"company_size": "5000+"}, {}),
        {},
    )
    assert assigned == {"tier": "hot", "lifecycle": "new", "fit": "enterprise"}
    with pytest.raises(ValueError, match="set 'x'"):
        SegmentSets.from_config({"x": []})
    with pytest.raises(ValueError, match="map"):
        SegmentSets.from_config([{"name": "a", "when": {"all": []}}])
