"""Segment rules: data (field / operator / value, combined with all / any), evaluated in order.

The config holds several independent segment sets (e.g. `tier` by score, `lifecycle` by behaviour,
`fit` by firmographics); a lead has one segment per set: the first rule of the set that matches.
A rule may add `stay_while`, a looser condition that keeps a lead in the segment once it is in
(hysteresis: enter at >= 0.70, leave below 0.65). Rules are compiled once into small closures over
columns: `assign_batch` takes a micro-batch (one lead is a batch of one) and decides each condition with a
few array operations. Nothing from the config is ever evaluated as code.
`check_segments` validates the config's `segments` section against the features, naming the line of each problem.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.spec import ConfigDocument, ConfigLoc, ConfigProblem, FeatureSpec, Severity, did_you_mean

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
# A rule field is `score` or one of the others with a name after a dot: feature.<name>, profile.<attribute>,
# count.<event type> (app.domain.batch builds the columns so).
_FIELD_KINDS = ("score", "feature", "profile", "count")


Mask = npt.NDArray[np.bool_]
BatchPredicate = Callable[["LeadColumns"], Mask]
Column = Callable[[str], npt.NDArray[Any]]
"""A batch's rule field -> one value per lead: float64 with NaN for a missing value (score, count.<type>,
numeric feature.<name>), or dtype=object holding str or None (profile.<attr>, categorical feature.<name>)."""


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
        kind, _, name = self.field.partition(".")
        if not (self.field == "score" or (kind in _FIELD_KINDS[1:] and name)):
            raise ValueError(
                f"field {self.field!r} must be score, feature.<name>, profile.<attribute> or count.<event type>"
                + _field_hint(kind, name)
            )
        if self.op not in _OPERATORS:
            raise ValueError(f"op {self.op!r} is not one of {sorted(_OPERATORS)}{did_you_mean(self.op, _OPERATORS)}")
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list value")
        return self

    def compile(self) -> BatchPredicate:
        """The condition over a batch of leads: a mask, True for each lead it holds for."""
        if self.all is not None:
            return _all([c.compile() for c in self.all])
        if self.any is not None:
            return _any([c.compile() for c in self.any])
        return _leaf(str(self.field), str(self.op), self.value)


def _field_hint(kind: str, name: str) -> str:
    close = difflib.get_close_matches(kind, _FIELD_KINDS, n=1)
    if not close:
        return ""
    field = "score" if close[0] == "score" else f"{close[0]}.{name or '<name>'}"
    return f"; did you mean {field!r}?"


def _value_test(op: str, expected: Any) -> Callable[[Any], bool]:
    """A leaf's answer for one value (None: the lead has no value), with Python's comparisons."""
    if op == "exists":
        want = expected is None or bool(expected)
        return lambda actual: (actual is not None) == want
    if op in ("in", "not_in"):
        members = frozenset(expected)
        inside = op == "in"
        return lambda actual: (actual in members) == inside
    compare = _COMPARISONS[op]

    def test(actual: Any) -> bool:
        if actual is None:
            return False  # a value that does not exist yet matches no comparison
        try:
            return compare(actual, expected)
        except TypeError:
            return False

    return test


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


def _leaf(field: str, op: str, expected: Any) -> BatchPredicate:
    """A leaf over a whole batch: array operations on float64 columns where they give Python's answer exactly,
    otherwise the value test, asked once per distinct value of the column."""
    test = _value_test(op, expected)
    on_numbers = _numbers_leaf(op, expected)

    def predicate(columns: LeadColumns) -> Mask:
        column = columns[field]
        if on_numbers is not None and isinstance(column, _Numbers):
            return on_numbers(column)
        labels = columns.labels(field)
        return np.array([test(value) for value in labels.distinct], dtype=np.bool_)[labels.codes]

    return predicate


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


def _all(parts: list[BatchPredicate]) -> BatchPredicate:
    def predicate(columns: LeadColumns) -> Mask:
        mask = np.ones(columns.n, dtype=np.bool_)
        for part in parts:
            mask &= part(columns)
        return mask

    return predicate


def _any(parts: list[BatchPredicate]) -> BatchPredicate:
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
    """An ordered rule list; `assign_batch` gives each lead the first matching segment's name."""

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

    def assign_batch(self, column: Column, n: int, current: Sequence[str | None]) -> list[str]:
        """The segment of each of n leads given as columns, in the same order: the first rule that matches; a
        lead's `current` segment also matches while its stay_while does; the last rule is the catch-all."""
        return self.assign_columns(LeadColumns(column, n), current)

    def assign_columns(self, columns: LeadColumns, current: Sequence[str | None] | None) -> list[str]:
        """`assign_batch` over columns that may be shared with other segment sets (None: no current segments)."""
        n = columns.n
        if current is not None and len(current) != n:
            raise ValueError(f"{len(current)} current segments for {n} leads; give one (or None) per lead")
        in_segment = None
        if current is not None and self.has_stay_while:
            in_segment = np.fromiter(current, dtype=object, count=n)
        chosen = np.full(n, len(self._compiled) - 1, dtype=np.intp)  # the fallback
        undecided = np.ones(n, dtype=np.bool_)
        # The last rule need not be evaluated: matching it or not, a lead left over gets the fallback.
        for index, (name, enter, stay) in enumerate(self._compiled[:-1]):
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
    def names(self) -> list[tuple[str, str]]:
        """Every (segment set, segment) pair, in config order."""
        return [(set_name, segment) for set_name, rules in self.sets.items() for segment in rules.names]

    @property
    def fields(self) -> frozenset[str]:
        """Every rule field any set reads: the columns `assign_batch` may ask for."""
        return frozenset().union(*(rules.fields for rules in self.sets.values()))

    def assign_batch(self, column: Column, n: int, current: Sequence[Mapping[str, str]]) -> dict[str, list[str]]:
        """Segment set name -> the segment of each of the n leads (same order).

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


# --- checking the config's `segments` section ----------------------------------------------------------------------


def check_segments(
    document: ConfigDocument, spec: FeatureSpec | None
) -> tuple[SegmentSets | None, list[ConfigProblem]]:
    """The `segments` section as SegmentSets (None if it has errors) and every problem found in it, at its line.

    With a spec, each condition's field must be one the lead's facts have, and its value of the field's kind.
    """
    if "segments" not in document.data:
        return None, [document.missing_section("segments")]
    section = document.data["segments"]
    if not isinstance(section, dict) or not section:
        message = "segments must map each segment set's name to its ordered list of rules (e.g. tier: [...])"
        return None, [document.error(("segments",), message)]
    problems: list[ConfigProblem] = []
    sets: dict[str, SegmentRules] = {}
    for set_name, items in section.items():
        at: ConfigLoc = ("segments", str(set_name))
        if not isinstance(set_name, str) or not re.match(SEGMENT_NAME, set_name):
            problems.append(document.error(at, f"segment set name {set_name!r} must match {SEGMENT_NAME}"))
        if not isinstance(items, list) or not items:
            problems.append(document.error(at, f"segment set {set_name!r} must be a non-empty list of rules"))
            continue
        rules = _checked_rules(document, at, items, spec, problems)
        if rules is not None:
            sets[str(set_name)] = SegmentRules(rules)
    if any(problem.severity is Severity.ERROR for problem in problems):
        return None, problems
    return SegmentSets(sets), problems


def rule_event_types(section: Any) -> frozenset[str]:
    """The event types a raw `segments` section counts (`count.<type>`), also where its rules are invalid."""
    found: set[str] = set()
    pending, seen = [section], set()
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue  # a YAML alias met again
        seen.add(id(node))
        if isinstance(node, dict):
            field = node.get("field")
            if isinstance(field, str) and field.startswith("count.") and field != "count.":
                found.add(field.removeprefix("count."))
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return frozenset(found)


def _checked_rules(
    document: ConfigDocument, at: ConfigLoc, items: list[Any], spec: FeatureSpec | None, problems: list[ConfigProblem]
) -> list[SegmentRule] | None:
    """The rules of one set (None if any is invalid), adding what is wrong with them to `problems`."""
    set_name = at[-1]
    rules: list[tuple[ConfigLoc, SegmentRule]] = []
    for index, item in enumerate(items):
        try:
            rules.append(((*at, index), SegmentRule.model_validate(item)))
        except ValidationError as exc:
            problems.extend(document.validation_problems(exc, SegmentRule, (*at, index)))
    valid = len(rules) == len(items)
    name_lines: dict[str, int | None] = {}
    catch_all: str | None = None  # the first rule that matches every lead: the rules after it are never reached
    for rule_at, rule in rules:
        if rule.name in name_lines:
            valid = False
            problems.append(
                document.error(
                    (*rule_at, "name"),
                    f"segment {rule.name!r} is already in set {set_name!r} (line {name_lines[rule.name]}); "
                    "names must be unique within a set",
                )
            )
        name_lines.setdefault(rule.name, document.line_of((*rule_at, "name")))
        if catch_all is not None:
            message = f"segment {rule.name!r} is never assigned: the rule {catch_all!r} before it matches every lead"
            problems.append(document.warning(rule_at, message))
        elif _matches_everyone(rule.when):
            catch_all = rule.name
        for key, condition in (("when", rule.when), ("stay_while", rule.stay_while)):
            if condition is not None:
                problems.extend(_condition_problems(document, (*rule_at, key), condition, spec))
    last_at, last = rules[-1] if rules else ((), None)
    if last is not None and last_at[-1] == len(items) - 1 and catch_all is None:
        problems.append(
            document.warning(
                (*last_at, "when"),
                f"the last rule {last.name!r} is the fallback of set {set_name!r}: a lead no rule matches gets it "
                "even when its `when` does not hold; write `when: {all: []}` to say so, or add a catch-all rule",
            )
        )
    return [rule for _, rule in rules] if valid else None


def _matches_everyone(condition: Condition) -> bool:
    if condition.all is not None:
        return all(_matches_everyone(c) for c in condition.all)  # `all: []` matches every lead
    if condition.any is not None:
        return any(_matches_everyone(c) for c in condition.any)
    return False


def _condition_problems(
    document: ConfigDocument, at: ConfigLoc, condition: Condition, spec: FeatureSpec | None
) -> Iterator[ConfigProblem]:
    """What is wrong with a condition and the conditions inside it."""
    for key, children in (("all", condition.all), ("any", condition.any)):
        if children is None:
            continue
        if key == "any" and not children:
            yield document.warning((*at, key), "an empty `any` matches no lead (an empty `all` matches every lead)")
        for index, child in enumerate(children):
            yield from _condition_problems(document, (*at, key, index), child, spec)
    if condition.field is not None and condition.op is not None:
        yield from _leaf_problems(document, at, condition.field, condition.op, condition.value, spec)


def _leaf_problems(
    document: ConfigDocument, at: ConfigLoc, field: str, op: str, value: Any, spec: FeatureSpec | None
) -> Iterator[ConfigProblem]:
    kind, _, name = field.partition(".")
    holds: str | None = "a number"  # what the field reads: "a number", "text", or None when unknown (no spec)
    if kind == "feature":
        if spec is None:
            holds = None
        elif name in spec.profile_attributes:
            holds = "text"
        elif name not in spec.feature_names:
            # rule_columns gives NaN for it: the condition would never hold, silently
            hint = did_you_mean(name, spec.feature_names)
            yield document.error((*at, "field"), f"{field}: the features have no {name!r}{hint}")
            return
    elif kind == "profile":
        holds = "text"
        if spec is not None and name not in spec.profile_attributes:
            # Not an error: a rule can read any attribute profile updates carry, modelled or not.
            yield document.warning(
                (*at, "field"),
                f"{field}: {name!r} is not one of the profile_attributes{did_you_mean(name, spec.profile_attributes)}"
                " (the rule sees it only if profile updates carry exactly that key)",
            )
    elif kind == "count" and spec is not None and name not in spec.event_types:
        # Not an error: every event type is counted, so this works if producers send exactly this type.
        yield document.warning(
            (*at, "field"),
            f"{field}: no signal, counted type, ratio or conversion_type names event type {name!r}"
            f"{did_you_mean(name, spec.event_types)} (the rule counts only events sent with exactly that type)",
        )
    if holds is not None:
        yield from _value_problems(document, at, field, op, value, holds)


def _value_problems(
    document: ConfigDocument, at: ConfigLoc, field: str, op: str, value: Any, holds: str
) -> Iterator[ConfigProblem]:
    """A value of another kind than the field's never compares equal or in order with it: the condition is dead."""
    if op == "exists":
        if value is not None and not isinstance(value, bool):
            yield document.error((*at, "value"), f"{field} exists: the value is true, false or left out, not {value!r}")
        return
    if op in ("in", "not_in"):
        for index, member in enumerate(value):
            mismatch = _mismatch(member, holds) if member is not None else None
            if mismatch:
                yield document.error(
                    (*at, "value", index), f"{field} holds {holds} but the member {mismatch}, so it never matches"
                )
        return
    if value is None:
        yield document.error(
            (*at, "op"), f"{field} {op} needs a value (to match a missing value: op: exists, value: false)"
        )
        return
    mismatch = _mismatch(value, holds)
    if mismatch:
        outcome = "holds for every lead with a value" if op == "ne" else "never holds"
        yield document.error((*at, "value"), f"{field} holds {holds} but {mismatch}, so this condition {outcome}")
    elif field == "score" and not 0 <= value <= 1:
        yield document.warning(
            (*at, "value"),
            f"score is a probability between 0 and 1; {value!r} is outside that range"
            + (" (a percentage? write it as a fraction)" if 1 < value <= 100 else ""),
        )


def _mismatch(value: Any, holds: str) -> str | None:
    """Why `value` cannot be compared with a field holding `holds` ("a number" or "text"), or None if it can."""
    if isinstance(value, bool):
        return f"{value!r} is a boolean (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"
    if holds == "a number" and isinstance(value, str):
        return f"{value!r} is text" + (" (write it without quotes)" if _is_number(value) else "")
    if holds == "text" and isinstance(value, int | float):
        return f"{value!r} is a number (quote it: '{value}')"
    if not isinstance(value, str | int | float):
        return f"{value!r} is a {type(value).__name__}"
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
