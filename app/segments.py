"""Segment rules: data (field / operator / value, combined with all / any), evaluated in order.

The config holds several independent segment sets (e.g. `tier` by score, `lifecycle` by behaviour,
`fit` by firmographics); a lead has one segment per set: the first rule of the set that matches.
A rule may add `stay_while`, a looser condition that keeps a lead in the segment once it is in
(hysteresis: enter at >= 0.70, leave below 0.65). Rules are compiled once into small closures;
nothing from the config is ever evaluated as code.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.vector import FeatureValue

SEGMENT_NAME = r"^[a-z][a-z0-9_-]*$"
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}
_OPERATORS = {*_COMPARISONS, "in", "not_in", "exists"}
_NAMESPACES = ("score", "feature.", "profile.", "count.")


@dataclass(frozen=True)
class LeadFacts:
    """What a rule can look at."""

    score: float
    features: Mapping[str, FeatureValue]
    profile: Mapping[str, str]
    counts: Mapping[str, int]


Predicate = Callable[[LeadFacts], bool]


def getter(field: str) -> Callable[[LeadFacts], Any]:
    """The accessor of a rule field, resolved once at compile time (rules run for every scored lead)."""
    if field == "score":
        return lambda facts: facts.score
    namespace, _, name = field.partition(".")
    if namespace == "feature":
        return lambda facts: facts.features.get(name)
    if namespace == "profile":
        return lambda facts: facts.profile.get(name)
    return lambda facts: facts.counts.get(name, 0)


class Condition(BaseModel):
    """Either a leaf {field, op, value} or a combination {all: [...]} / {any: [...]}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str | None = None
    op: str | None = None
    value: Any = None
    all: list[Condition] | None = None
    any: list[Condition] | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> Condition:
        combined = [k for k in ("all", "any") if getattr(self, k) is not None]
        if combined and self.field is not None:
            raise ValueError("a condition is either {field, op, value} or {all|any: [...]}, not both")
        if len(combined) > 1:
            raise ValueError("use one of 'all' or 'any' per condition; nest them to combine")
        if combined:
            return self
        if self.field is None or self.op is None:
            raise ValueError("a leaf condition needs 'field' and 'op'")
        if not self.field.startswith(_NAMESPACES):
            raise ValueError(f"field {self.field!r} must be score, feature.<name>, profile.<name> or count.<type>")
        if self.op not in _OPERATORS:
            raise ValueError(f"op {self.op!r} is not one of {sorted(_OPERATORS)}")
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list value")
        return self

    def compile(self) -> Predicate:
        if self.all is not None:
            parts = [c.compile() for c in self.all]
            return lambda facts: all(p(facts) for p in parts)
        if self.any is not None:
            parts = [c.compile() for c in self.any]
            return lambda facts: any(p(facts) for p in parts)
        return _leaf(str(self.field), str(self.op), self.value)


def _leaf(field: str, op: str, expected: Any) -> Predicate:
    value = getter(field)
    if op == "exists":
        want = expected is None or bool(expected)
        return lambda facts: (value(facts) is not None) == want
    if op in ("in", "not_in"):
        members = frozenset(expected)
        inside = op == "in"
        return lambda facts: (value(facts) in members) == inside
    compare = _COMPARISONS[op]

    def predicate(facts: LeadFacts) -> bool:
        actual = value(facts)
        if actual is None:
            return False  # a value that does not exist yet matches no comparison
        try:
            return compare(actual, expected)
        except TypeError:
            return False

    return predicate


class SegmentRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=SEGMENT_NAME)
    description: str = ""
    when: Condition = Field(description="a lead enters (or is in) the segment when this matches")
    stay_while: Condition | None = Field(
        default=None, description="a lead already in the segment stays while this matches (hysteresis)"
    )

    def leaves(self) -> list[Condition]:
        """Every leaf condition of the rule (for finding time thresholds)."""
        found: list[Condition] = []
        pending = [self.when] + ([self.stay_while] if self.stay_while else [])
        while pending:
            condition = pending.pop()
            children = condition.all if condition.all is not None else condition.any
            if children is None:
                found.append(condition)
            else:
                pending.extend(children)
        return found


class SegmentRules:
    """An ordered rule list; `assign` gives the first matching segment's name."""

    def __init__(self, rules: list[SegmentRule]) -> None:
        if not rules:
            raise ValueError("the segments section needs at least one rule")
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"segment names must be unique: {names}")
        self.rules = rules
        self._compiled = [
            (rule.name, rule.when.compile(), rule.stay_while.compile() if rule.stay_while else None) for rule in rules
        ]
        self.fallback = rules[-1].name
        # A set whose rules read the score is explained by the model's reasons; others by their own rules.
        self.uses_score = any(leaf.field == "score" for rule in rules for leaf in rule.leaves())

    @classmethod
    def from_config(cls, section: Any) -> SegmentRules:
        if not isinstance(section, list):
            raise ValueError("the 'segments' section must be an ordered list of rules")
        return cls([SegmentRule.model_validate(item) for item in section])

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rules]

    def assign(self, facts: LeadFacts, current: str | None = None) -> str:
        """The first rule that matches; the lead's `current` segment also matches while its stay_while does."""
        for name, enter, stay in self._compiled:
            if enter(facts) or (stay is not None and name == current and stay(facts)):
                return name
        # No rule matched: the last rule is the catch-all by convention.
        return self.fallback


class SegmentSets:
    """The independent segmentations of the config, in order; the first is the primary one."""

    def __init__(self, sets: dict[str, SegmentRules]) -> None:
        if not sets:
            raise ValueError("the 'segments' section needs at least one segment set")
        self.sets = sets
        self.primary = next(iter(sets))

    @classmethod
    def from_config(cls, section: Any) -> SegmentSets:
        if not isinstance(section, dict):
            raise ValueError("the 'segments' section must map each segment set's name to its ordered rules")
        sets = {}
        for name, rules in section.items():
            if not isinstance(name, str) or not re.match(SEGMENT_NAME, name):
                raise ValueError(f"segment set name {name!r} must match {SEGMENT_NAME}")
            try:
                sets[name] = SegmentRules.from_config(rules)
            except ValueError as exc:
                raise ValueError(f"segment set {name!r}: {exc}") from exc
        return cls(sets)

    def assign(self, facts: LeadFacts, current: Mapping[str, str]) -> dict[str, str]:
        return {name: rules.assign(facts, current.get(name)) for name, rules in self.sets.items()}

    def __contains__(self, segment_set: object) -> bool:
        return segment_set in self.sets

    def __getitem__(self, segment_set: str) -> SegmentRules:
        return self.sets[segment_set]
