"""Segment rules: data (field / operator / value, combined with all / any), evaluated in order.

The config holds several independent segment sets (e.g. `tier` by score, `lifecycle` by behaviour,
`fit` by firmographics); a lead has one segment per set: the first rule of the set that matches.
A rule may add `stay_while`, a looser condition that keeps a lead in the segment once it is in
(hysteresis: enter at >= 0.70, leave below 0.65). Rules are compiled once into small closures;
nothing from the config is ever evaluated as code. `assign` takes one lead; `assign_batch` takes a
micro-batch as columns and gives the same segments with a few array operations per condition.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
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
_ARRAY_COMPARISONS: dict[str, np.ufunc] = {
    "eq": np.equal,
    "ne": np.not_equal,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
}
_OPERATORS = {*_COMPARISONS, "in", "not_in", "exists"}
# Integers up to 2**53 are exact in float64, so comparing one with a float64 column is Python's comparison.
_EXACT_FLOAT_INT = 2**53
_NAMESPACES = ("score", "feature.", "profile.", "count.")


@dataclass(frozen=True)
class LeadFacts:
    """What a rule can look at."""

    score: float
    features: Mapping[str, FeatureValue]
    profile: Mapping[str, str]
    counts: Mapping[str, int]


Predicate = Callable[[LeadFacts], bool]
Mask = npt.NDArray[np.bool_]
Column = Callable[[str], npt.NDArray[Any]]
"""A batch's rule field -> one value per lead: float64 with NaN for a missing value (score, count.<type>,
numeric feature.<name>), or dtype=object holding str or None (profile.<attr>, categorical feature.<name>)."""


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

    def compile_batch(self) -> BatchPredicate:
        """The same condition over a batch of leads: a mask, True where `compile()` would be True."""
        if self.all is not None:
            return _batch_all([c.compile_batch() for c in self.all])
        if self.any is not None:
            return _batch_any([c.compile_batch() for c in self.any])
        return _batch_leaf(str(self.field), str(self.op), self.value)


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


@dataclass(frozen=True)
class _Numbers:
    """A float64 column; `present` is False where the scalar value is None."""

    values: npt.NDArray[np.float64]
    present: Mask


@dataclass(frozen=True)
class _Labels:
    """A column as its distinct values (None for a missing one) and each lead's index into them: a few distinct
    values (countries, company sizes) are tested once each instead of once per lead."""

    distinct: list[Any]
    codes: npt.NDArray[np.intp]


class LeadColumns:
    """The rule fields of one batch of leads, each fetched from `column` at most once and prepared for the rules."""

    def __init__(self, column: Column, n: int) -> None:
        self.n = n
        self._column = column
        self._prepared: dict[str, _Numbers | _Labels] = {}
        self._labelled: dict[str, _Labels] = {}

    def __getitem__(self, field: str) -> _Numbers | _Labels:
        prepared = self._prepared.get(field)
        if prepared is None:
            prepared = self._prepared[field] = self._prepare(field)
        return prepared

    def labels(self, field: str) -> _Labels:
        """The field as distinct values, also for a float64 column (for leaves that need Python's comparisons)."""
        prepared = self[field]
        if isinstance(prepared, _Labels):
            return prepared
        labels = self._labelled.get(field)
        if labels is None:
            uniques, codes = np.unique(prepared.values, return_inverse=True)  # all NaNs become one NaN
            distinct = [None if math.isnan(value) else value for value in uniques.tolist()]
            labels = self._labelled[field] = _Labels(distinct, codes.astype(np.intp, copy=False))
        return labels

    def _prepare(self, field: str) -> _Numbers | _Labels:
        raw = np.asarray(self._column(field))
        if raw.shape != (self.n,):
            raise ValueError(f"column {field!r} has shape {raw.shape}; the rules need one value per lead ({self.n})")
        if raw.dtype.kind not in "biuf":  # str or None (object), or a numpy string array
            items = raw.tolist()
            distinct = list(dict.fromkeys(items))
            position = {value: index for index, value in enumerate(distinct)}
            return _Labels(distinct, np.fromiter(map(position.__getitem__, items), dtype=np.intp, count=self.n))
        values = raw.astype(np.float64, copy=False)
        present = ~np.isnan(values)
        present.flags.writeable = False  # shared by every leaf that reads the field
        return _Numbers(values, present)


BatchPredicate = Callable[[LeadColumns], Mask]


def _batch_leaf(field: str, op: str, expected: Any) -> BatchPredicate:
    """A leaf over a whole batch: array operations on float64 columns where they give Python's answer exactly,
    otherwise the scalar leaf itself, asked once per distinct value of the column."""
    scalar = _leaf(field, op, expected)
    on_numbers = _numbers_leaf(op, expected)

    def predicate(columns: LeadColumns) -> Mask:
        column = columns[field]
        if on_numbers is not None and isinstance(column, _Numbers):
            return on_numbers(column)
        labels = columns.labels(field)
        answers = [scalar(_holding(field, value)) for value in labels.distinct]
        return np.array(answers, dtype=np.bool_)[labels.codes]

    return predicate


def _holding(field: str, value: Any) -> LeadFacts:
    """Facts in which `field` reads `value` (so the batch path asks the scalar leaf itself)."""
    _, _, name = field.partition(".")
    return LeadFacts(value, {name: value}, {name: value}, {name: value})


def _numbers_leaf(op: str, expected: Any) -> Callable[[_Numbers], Mask] | None:
    """The leaf as array operations on a float64 column, or None where they could differ from Python."""
    if op == "exists":
        want = expected is None or bool(expected)
        return lambda column: column.present if want else ~column.present
    if op in ("in", "not_in"):
        members = frozenset(expected)
        # Only numbers can equal a float; float64 holds them exactly unless they are huge integers.
        numbers = [m for m in members if isinstance(m, int | float)]
        if not all(_exact_in_float64(m) for m in numbers):
            return None
        targets = np.array(numbers, dtype=np.float64)
        missing_inside = None in members
        inside = op == "in"

        def membership(column: _Numbers) -> Mask:
            found = np.isin(column.values, targets)
            if missing_inside:
                found |= ~column.present
            return found if inside else ~found

        return membership
    if not (isinstance(expected, int | float) and _exact_in_float64(expected)):
        return None  # e.g. a number compared with a string: Python's answer per value
    compare, threshold = _ARRAY_COMPARISONS[op], float(expected)
    # NaN compares unequal to everything, so `ne` alone needs the mask; a missing value matches no comparison.
    return lambda column: compare(column.values, threshold) & column.present


def _exact_in_float64(number: int | float) -> bool:
    return isinstance(number, float) or abs(number) <= _EXACT_FLOAT_INT


def _batch_all(parts: list[BatchPredicate]) -> BatchPredicate:
    def predicate(columns: LeadColumns) -> Mask:
        mask = np.ones(columns.n, dtype=np.bool_)
        for part in parts:
            mask &= part(columns)
        return mask

    return predicate


def _batch_any(parts: list[BatchPredicate]) -> BatchPredicate:
    def predicate(columns: LeadColumns) -> Mask:
        mask = np.zeros(columns.n, dtype=np.bool_)
        for part in parts:
            mask |= part(columns)
        return mask

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
        self._compiled_batch = [
            (rule.name, rule.when.compile_batch(), rule.stay_while.compile_batch() if rule.stay_while else None)
            for rule in rules
        ]
        self._names = np.array(self.names, dtype=object)
        self.fallback = rules[-1].name
        self.fields = frozenset(str(leaf.field) for rule in rules for leaf in rule.leaves())
        self.has_stay_while = any(rule.stay_while is not None for rule in rules)
        # A set whose rules read the score is explained by the model's reasons; others by their own rules.
        self.uses_score = "score" in self.fields

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

    def assign_batch(self, column: Column, n: int, current: Sequence[str | None]) -> list[str]:
        """`assign` for each of n leads given as columns, in the same order."""
        return self.assign_columns(LeadColumns(column, n), current)

    def assign_columns(self, columns: LeadColumns, current: Sequence[str | None] | None) -> list[str]:
        """`assign_batch` over columns that may be shared with other segment sets (None: no current segments)."""
        n = columns.n
        if current is not None and len(current) != n:
            raise ValueError(f"{len(current)} current segments for {n} leads; give one (or None) per lead")
        in_segment = None
        if current is not None and self.has_stay_while:
            in_segment = np.fromiter(current, dtype=object, count=n)
        chosen = np.full(n, len(self._compiled_batch) - 1, dtype=np.intp)  # the fallback
        undecided = np.ones(n, dtype=np.bool_)
        # The last rule need not be evaluated: matching it or not, a lead left over gets the fallback.
        for index, (name, enter, stay) in enumerate(self._compiled_batch[:-1]):
            matched = enter(columns)
            if stay is not None and in_segment is not None:
                staying = np.equal(in_segment, name)
                if staying.any():
                    matched = matched | (staying & stay(columns))
            chosen[matched & undecided] = index
            undecided &= ~matched
            if not undecided.any():
                break
        names: list[str] = self._names[chosen].tolist()
        return names


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

    @property
    def fields(self) -> frozenset[str]:
        """Every rule field any set reads: the columns `assign_batch` may ask for."""
        return frozenset().union(*(rules.fields for rules in self.sets.values()))

    def assign(self, facts: LeadFacts, current: Mapping[str, str]) -> dict[str, str]:
        return {name: rules.assign(facts, current.get(name)) for name, rules in self.sets.items()}

    def assign_batch(self, column: Column, n: int, current: Sequence[Mapping[str, str]]) -> dict[str, list[str]]:
        """Segment set name -> the segment of each of the n leads (same order), as `assign` gives per lead.

        `column(field)` is called at most once per field, and only for fields the rules read.
        """
        if len(current) != n:
            raise ValueError(f"{len(current)} current segment maps for {n} leads; give one (maybe empty) per lead")
        columns = LeadColumns(column, n)
        return {
            name: rules.assign_columns(columns, [c.get(name) for c in current] if rules.has_stay_while else None)
            for name, rules in self.sets.items()
        }

    def __contains__(self, segment_set: object) -> bool:
        return segment_set in self.sets

    def __getitem__(self, segment_set: str) -> SegmentRules:
        return self.sets[segment_set]
