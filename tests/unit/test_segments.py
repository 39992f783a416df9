"""Segment rules: data, first match wins, all/any, missing values, bad rules refused; the batch engine gives the
reference reading of the rules (tests.support.reference_segment) on every operator and column kind."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pydantic import ValidationError

from app.domain.segments import SegmentRules, SegmentSets
from models.spec import read_config_file
from models.vector import FeatureValue
from tests.support import LeadFacts, reference_segment, rule_columns, segment_of


def facts(score: float, hours: float | None = 1.0, converted: int = 0, country: str | None = None) -> LeadFacts:
    profile = {"country": country} if country else {}
    return LeadFacts(score, {"hours_since_last_event": hours}, profile, {"converted": converted})


@pytest.fixture(scope="module")
def default_rules() -> SegmentRules:
    return SegmentSets.from_config(read_config_file()["segments"])["tier"]


def test_default_rules_in_order(default_rules: SegmentRules) -> None:
    assert default_rules.names == ["customer", "hot", "warm", "dormant", "cold"]
    assert segment_of(default_rules, facts(0.9, converted=1)) == "customer"
    assert segment_of(default_rules, facts(0.9, hours=10)) == "hot"
    assert segment_of(default_rules, facts(0.9, hours=24 * 10)) == "warm"  # likely but quiet for 10 days
    assert segment_of(default_rules, facts(0.12)) == "warm"
    assert segment_of(default_rules, facts(0.01, hours=24 * 40)) == "dormant"
    assert segment_of(default_rules, facts(0.01)) == "cold"
    assert segment_of(default_rules, facts(0.01, hours=None)) == "cold"  # no value: no comparison matches


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
    assert segment_of(rules, facts(0.5, country="FR")) == "emea"
    assert segment_of(rules, facts(0.5, country="GB")) == "emea"
    assert segment_of(rules, facts(0.5, country="US")) == "known"
    assert segment_of(rules, facts(0.5)) == "rest"


def test_last_rule_is_the_fallback() -> None:
    rules = SegmentRules.from_config([{"name": "high", "when": {"field": "score", "op": "gt", "value": 0.5}}])
    assert segment_of(rules, facts(0.1)) == "high"


@pytest.mark.parametrize(
    "bad",
    [
        [{"name": "x", "when": {"field": "score", "op": "like", "value": 1}}],
        [{"name": "x", "when": {"field": "__import__('os')", "op": "eq", "value": 1}}],
        [{"name": "x", "when": {"field": "score", "op": "in", "value": 3}}],
        [{"name": "x", "when": {"field": "score", "op": "gt", "value": 1, "all": []}}],
        [{"name": "Bad Name", "when": {"all": []}}],
        # Only score and the three namespaces with a name: these once passed a prefix test and read count "".
        [{"name": "x", "when": {"field": "scores", "op": "gt", "value": 1}}],
        [{"name": "x", "when": {"field": "score.x", "op": "gt", "value": 1}}],
        [{"name": "x", "when": {"field": "feature.", "op": "gt", "value": 1}}],
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
    current = segment_of(default_rules, facts(wobble[0]))
    assert current == "hot"
    changes = 0
    for score in wobble[1:]:
        nxt = segment_of(default_rules, facts(score), current)
        changes += nxt != current
        current = nxt
    assert changes == 0
    assert segment_of(default_rules, facts(0.26), "hot") == "warm"  # below the band: it leaves
    assert segment_of(default_rules, facts(0.29), "warm") == "warm"  # inside the band from below: it does not enter


def test_segment_sets_assign_independently() -> None:
    sets = SegmentSets.from_config(read_config_file()["segments"])
    assert sets.primary == "tier"
    lead = LeadFacts(0.5, {"hours_since_last_event": 1.0, "days_since_first_event": 2.0}, {"company_size": "5000+"})
    assigned = sets.assign_batch(rule_columns([lead]), 1, [{}])
    assert assigned == {"tier": ["hot"], "lifecycle": ["new"], "fit": ["enterprise"]}
    with pytest.raises(ValueError, match="set 'x'"):
        SegmentSets.from_config({"x": []})
    with pytest.raises(ValueError, match="map"):
        SegmentSets.from_config([{"name": "a", "when": {"all": []}}])


# --- many leads at once: the reference's segments, over columns -------------------------------------------------

# Python's edge cases: -0.0, a float beside a huge int (2.0**60 vs 2**60 + 1) that float64 cannot tell apart,
# NaN and bools as rule values, strings that look like numbers, None among `in` members.
NUMBERS: list[float | None] = [None, 0.0, -0.0, 0.5, 1.0, 3.0, 2.5, -1.0, 1e300, 2.0**60]
LABELS: list[str | None] = [None, "DE", "FR", "3", "", "de", "zz"]
EXPECTED: list[object] = [0, 3, 0.5, -1, True, False, "DE", "3", "", None, float("nan"), 2**60 + 1]
MEMBERS: list[list[object]] = [[3, "DE", 0.5], [1, 2.0, "x", None], ["FR", "3"], [], [True, 0], [2**60 + 1, 3], [None]]


def assert_batch_matches_reference(
    sets: SegmentSets, leads: list[LeadFacts], current: list[dict[str, str]], categorical: frozenset[str] = frozenset()
) -> None:
    requested: list[str] = []
    batch = sets.assign_batch(rule_columns(leads, categorical, requested), len(leads), current)
    assert len(requested) == len(set(requested)), "each column is fetched once"
    assert set(requested) <= sets.fields
    assert list(batch) == list(sets.sets)
    for name, assigned in batch.items():
        assert all(type(segment) is str for segment in assigned)
        expected = [reference_segment(sets[name], lead, c.get(name)) for lead, c in zip(leads, current, strict=True)]
        wrong = [i for i, segment in enumerate(assigned) if segment != expected[i]]
        first = wrong[0] if wrong else None
        assert first is None, f"{name}: lead {first} {leads[first]} batch {assigned[first]} expected {expected[first]}"


def random_current(rng: random.Random, sets: SegmentSets) -> dict[str, str]:
    current = {}
    for name, rules in sets.sets.items():
        choice = rng.choice([None, "not-a-segment", *rules.names])
        if choice is not None:
            current[name] = choice
    return current


def test_batch_matches_the_reference_on_the_default_config() -> None:
    sets = SegmentSets.from_config(read_config_file()["segments"])
    rng = random.Random(20240611)
    np_rng = np.random.default_rng(20240611)
    sizes = [None, "1-10", "11-50", "51-200", "201-1000", "1001-5000", "5000+", "unknown"]
    leads = []
    for _ in range(3000):
        features: dict[str, FeatureValue] = {
            # thresholds of the shipped rules, and values either side of them
            "hours_since_last_event": rng.choice([None, 168.0, 720.0, float(np_rng.exponential(400))]),
            "hours_since_last_high_intent": rng.choice([None, 336.0, float(np_rng.exponential(300))]),
            "days_since_first_event": rng.choice([None, 7.0, float(np_rng.exponential(10))]),
            "active_days": float(rng.randrange(6)),
        }
        counts = {t: rng.randrange(3) for t in ("converted", "email_unsubscribe", "email_bounce") if rng.random() < 0.2}
        size = rng.choice(sizes)
        score = rng.choice([0.09, 0.1, 0.27, 0.3, float(np_rng.beta(1, 4))])
        leads.append(LeadFacts(score, features, {"company_size": size} if size else {}, counts))
    assert_batch_matches_reference(sets, leads, [random_current(rng, sets) for _ in leads])


def synthetic_sets() -> SegmentSets:
    """Every operator on every kind of column, each both as an entry rule and as another rule's stay_while,
    plus nested and empty all/any."""
    fields = ["score", "feature.num", "feature.kind", "profile.country", "count.visits", "count.never"]
    leaves: list[dict[str, object]] = []
    for field in fields:
        for op in ("eq", "ne", "lt", "le", "gt", "ge"):
            leaves += [{"field": field, "op": op, "value": value} for value in EXPECTED]
        for op in ("in", "not_in"):
            leaves += [{"field": field, "op": op, "value": members} for members in MEMBERS]
        leaves += [{"field": field, "op": "exists", "value": value} for value in (True, False, None)]
        leaves.append({"field": field, "op": "exists"})
    section: dict[str, object] = {
        f"leaf{i}": [
            {"name": "in", "when": leaf, "stay_while": leaves[(i * 7 + 3) % len(leaves)]},
            {"name": "out", "when": {"all": []}},
        ]
        for i, leaf in enumerate(leaves)
    }
    section["nested"] = [
        {"name": "never", "when": {"any": []}, "stay_while": {"any": []}},
        {
            "name": "both",
            "when": {
                "all": [
                    {"field": "score", "op": "ge", "value": 0.5},
                    {
                        "any": [
                            {"field": "profile.country", "op": "in", "value": ["DE", 3]},
                            {"field": "feature.num", "op": "lt", "value": 1},
                        ]
                    },
                ]
            },
            "stay_while": {"any": [{"field": "feature.kind", "op": "ne", "value": "DE"}, {"all": []}]},
        },
        {
            "name": "deep",
            "when": {
                "any": [
                    {
                        "all": [
                            {"field": "feature.kind", "op": "exists", "value": False},
                            {"field": "count.visits", "op": "ge", "value": 2},
                        ]
                    },
                    {"all": [{"all": []}, {"field": "feature.num", "op": "ne", "value": 3}]},
                ]
            },
        },
        {"name": "sticky", "when": {"field": "score", "op": "gt", "value": 0.9}, "stay_while": {"all": []}},
        {"name": "quiet", "when": {"all": [{"any": []}, {"field": "score", "op": "ge", "value": 0}]}},
        {"name": "rest", "when": {"any": []}},
    ]
    return SegmentSets.from_config(section)


def test_batch_matches_the_reference_on_every_operator_and_column_kind() -> None:
    sets = synthetic_sets()
    rng = random.Random(7)
    leads = []
    for _ in range(2000):
        features = {"num": rng.choice(NUMBERS), "kind": rng.choice(LABELS)}
        country = rng.choice(LABELS)
        visits = rng.randrange(4)
        counts = {"visits": visits} if visits or rng.random() < 0.5 else {}
        score = rng.choice([0.0, 0.5, 1.0, 3.0, rng.random()])
        leads.append(LeadFacts(score, features, {"country": country} if country is not None else {}, counts))
    current = [random_current(rng, sets) for _ in leads]
    assert_batch_matches_reference(sets, leads, current, categorical=frozenset({"kind"}))


def test_batch_hysteresis(default_rules: SegmentRules) -> None:
    # hot: enter at >= 0.30, stay while >= 0.27 (shipped config)
    columns = {
        "score": np.array([0.31, 0.29, 0.29, 0.26]),
        "feature.hours_since_last_event": np.full(4, 10.0),
        "count.converted": np.zeros(4),
    }
    assigned = default_rules.assign_batch(columns.__getitem__, 4, [None, "hot", "warm", "hot"])
    assert assigned == ["hot", "hot", "warm", "warm"]  # enters; stays; does not enter from below; leaves


def test_batch_missing_values() -> None:
    rules = SegmentRules.from_config(
        [
            {"name": "other-hours", "when": {"field": "feature.hours", "op": "ne", "value": 5}},
            {"name": "no-country", "when": {"field": "profile.country", "op": "not_in", "value": ["DE", "FR"]}},
            {"name": "rest", "when": {"all": []}},
        ]
    )
    columns = {
        "feature.hours": np.array([np.nan, 5.0, 7.0]),  # NaN: no value, which is not "other than 5"
        "profile.country": np.array([None, "DE", None], dtype=object),
    }
    assert rules.assign_batch(columns.__getitem__, 3, [None] * 3) == ["no-country", "rest", "other-hours"]
    with pytest.raises(ValueError, match="one value per lead"):
        rules.assign_batch(columns.__getitem__, 4, [None] * 4)
