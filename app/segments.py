"""Segment rules: data (field / operator / value, combined with all / any), evaluated in order.

A lead's segment is the first rule that matches. Rules are compiled once into small closures;
nothing from the config is ever evaluated as code.
"""

from __future__ import annotations

import operator
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

    def lookup(self, field: str) -> Any:
        if field == "score":
            return self.score
        namespace, _, name = field.partition(".")
        if namespace == "feature":
            return self.features.get(name)
        if namespace == "profile":
            return self.profile.get(name)
        return self.counts.get(name, 0)


Predicate = Callable[[LeadFacts], bool]


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
    if op == "exists":
        want = expected is None or bool(expected)
        return lambda facts: (facts.lookup(field) is not None) == want
    if op in ("in", "not_in"):
        members = frozenset(expected)
        inside = op == "in"
        return lambda facts: (facts.lookup(field) in members) == inside
    compare = _COMPARISONS[op]

    def predicate(facts: LeadFacts) -> bool:
        actual = facts.lookup(field)
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
    when: Condition


class SegmentRules:
    """An ordered rule list; `assign` gives the first matching segment's name."""

    def __init__(self, rules: list[SegmentRule]) -> None:
        if not rules:
            raise ValueError("the segments section needs at least one rule")
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"segment names must be unique: {names}")
        self.rules = rules
        self._compiled = [(rule.name, rule.when.compile()) for rule in rules]
        self.fallback = rules[-1].name

    @classmethod
    def from_config(cls, section: Any) -> SegmentRules:
        if not isinstance(section, list):
            raise ValueError("the 'segments' section must be an ordered list of rules")
        return cls([SegmentRule.model_validate(item) for item in section])

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rules]

    def assign(self, facts: LeadFacts) -> str:
        for name, predicate in self._compiled:
            if predicate(facts):
                return name
        # No rule matched: the last rule is the catch-all by convention.
        return self.fallback
