"""The feature spec: which signals a lead's state tracks, how fast they decay, which are high intent.

It is read from the `features:` section of the YAML config so a user can bring their own event types
without code changes; the fold, the vectorizer, training and the points baseline all read the same spec.
The config file is read here too, remembering the line of every entry so that a problem names its line.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, get_args

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.yaml")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_FEATURE_NAME = r"^[a-z][a-z0-9_]*$"


class TimeFeature(NamedTuple):
    """A built-in feature that grows with the time since a moment the lead's state records (0: not yet)."""

    name: str
    since: str  # the LeadState attribute it counts from
    unit_ms: int
    wording: str  # how a reason states it; {} is the duration


TIME_FEATURES = (
    TimeFeature("hours_since_last_event", "anchor_ms", 3_600_000, "last active {} ago"),
    TimeFeature("hours_since_last_high_intent", "last_high_intent_ms", 3_600_000, "last high-intent action {} ago"),
    TimeFeature("days_since_first_event", "first_event_ms", 86_400_000, "first seen {} ago"),
)
# Features every spec has, whatever its signals (models.vector computes them, in this order).
BUILT_IN_FEATURES = (*(time.name for time in TIME_FEATURES), "active_days")
# A bare-number half-life (milliseconds) this short empties a signal between events: meant as days or hours.
_SHORTEST_SENSIBLE_HALF_LIFE_MS = 60_000
# How alike an event type must be to another to be called its typo (difflib ratio: 'emial_click' is 0.91 like
# 'email_click'; the real types 'webinar_register' and 'webinar_attend' are 0.67 alike).
_TYPO_LIKENESS = 0.85

_log = logging.getLogger(__name__)


def parse_duration_ms(value: Any) -> int:
    """'7d', '36h', '90m', '1.5d' or a number of milliseconds -> milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration like '7d', '12h', '30m'")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # field name -> the key a config file writes for it, where the two differ (for messages about keys)
    config_keys: ClassVar[Mapping[str, str]] = {}


class Aggregate(StrEnum):
    """How a signal with a `value` property folds its events' values."""

    SUM = "sum"  # decayed sum (without a value: a decayed count of events)
    LAST = "last"  # the value of the latest event (by event time)
    MAX = "max"  # the largest value seen


class Signal(_Strict):
    """A behavioural signal: events of `types` (optionally filtered on properties), decayed over time.

    With `value`, each event contributes its numeric property of that name instead of 1 (clicks in a session,
    an assessment score), aggregated by `aggregate`; an event whose value is missing or not a finite number
    contributes nothing and is counted as invalid.
    """

    name: str = Field(pattern=_FEATURE_NAME)
    types: tuple[str, ...] = Field(min_length=1)
    where: dict[str, str] = Field(default_factory=dict, description="property equality filter")
    points: float = Field(default=0.0, description="weight in the classic points-based score")
    value: str | None = Field(default=None, min_length=1, description="numeric property to aggregate")
    aggregate: Aggregate = Aggregate.SUM
    half_life_ms: int | None = Field(default=None, gt=0, description="a sum's decay; last and max do not decay")

    config_keys: ClassVar[Mapping[str, str]] = {"half_life_ms": "half_life"}

    @model_validator(mode="before")
    @classmethod
    def _half_life(cls, data: Any) -> Any:
        if isinstance(data, dict) and "half_life" in data:
            data = dict(data)
            data["half_life_ms"] = parse_duration_ms(data.pop("half_life"))
        return data

    @field_validator("aggregate")
    @classmethod
    def _aggregate_needs_a_value(cls, aggregate: Aggregate, info: ValidationInfo) -> Aggregate:
        if aggregate is not Aggregate.SUM and info.data.get("value") is None:
            raise ValueError(f"aggregate {aggregate.value!r} needs a `value` property to aggregate")
        return aggregate

    @model_validator(mode="after")
    def _half_life_present(self) -> Signal:
        if self.half_life_ms is None and self.aggregate is Aggregate.SUM:
            raise ValueError("a signal that counts or sums needs a half_life (e.g. '7d')")
        return self

    @property
    def feature_name(self) -> str:
        """A sum decays (`<name>_decayed`, as a count signal's); last and max are kept as they are."""
        return f"{self.name}_decayed" if self.aggregate is Aggregate.SUM else f"{self.name}_{self.aggregate.value}"

    @property
    def decays(self) -> bool:
        return self.aggregate is Aggregate.SUM

    @property
    def half_life(self) -> int:
        """A decaying signal's half-life in ms (validated present: every sum has one)."""
        if self.half_life_ms is None:
            raise ValueError(f"signal {self.name!r} ({self.aggregate.value}) does not decay")
        return self.half_life_ms


class DaysSince(_Strict):
    """Days from a date a lead's profile carries (a programme start, a deal's close date) to the scoring time;
    negative before it (days until a deadline)."""

    name: str = Field(pattern=_FEATURE_NAME)
    property: str = Field(min_length=1, description="profile attribute holding an ISO date or RFC 3339 time")


class SignalMatcher(NamedTuple):
    """One signal an event type may feed, as the fold reads it."""

    name: str
    half_life_ms: int  # 0 for a signal that does not decay
    where: tuple[tuple[str, str], ...]  # property equality filter
    high_intent: bool
    value: str | None  # numeric property to aggregate (None: the event counts 1)
    aggregate: Aggregate
    decays: bool  # a decayed sum (the common case: checked first, without an enum lookup)

    def matches(self, properties: Mapping[str, Any]) -> bool:
        return all(str(properties.get(key)) == value for key, value in self.where)


class FoldPlan(NamedTuple):
    """What the fold does with an event of one type, besides counting it."""

    signals: tuple[SignalMatcher, ...]
    profile: bool  # a profile update: its properties set attributes
    keep_last: bool  # its latest time is a feature (days_since_last)
    exits: bool  # an exit type


class Ratio(_Strict):
    """A lifetime ratio of two event-type counts, e.g. email click-through = clicks / sends."""

    name: str = Field(pattern=_FEATURE_NAME)
    numerator: str
    denominator: str


ConfigLoc = tuple[str | int, ...]
"""Where an entry is in the config document: mapping keys and list indexes, like a pydantic error's `loc`."""


class FeatureOrigin(NamedTuple):
    """A feature and the entry of the `features` section that defines it (None: built in)."""

    name: str
    entry: ConfigLoc | None


class EventTypeEntry(NamedTuple):
    """A place in the `features` section that names an event type feeding a feature."""

    event_type: str
    entry: ConfigLoc
    role: str  # "counted type", "signal 'email_open' type", "ratio 'email_ctr' numerator"

    def describe(self) -> str:
        return f"{self.role} {self.event_type!r}"


class FeatureSpec(_Strict):
    signals: tuple[Signal, ...] = Field(min_length=1)
    counted_types: tuple[str, ...] = Field(description="event types whose lifetime counts are features")
    ratios: tuple[Ratio, ...] = ()
    high_intent: tuple[str, ...] = Field(description="signal names whose events count as high intent")
    profile_attributes: tuple[str, ...] = Field(description="profile attributes used as categorical features")
    numeric_profile_attributes: tuple[str, ...] = Field(
        default=(), description="profile attributes used as numbers (a value that is not one is missing)"
    )
    days_since: tuple[DaysSince, ...] = Field(default=(), description="days since a date in the lead's profile")
    days_since_last: tuple[str, ...] = Field(
        default=(), description="event types whose latest event's age in days is a feature"
    )
    exit_types: tuple[str, ...] = Field(
        default=(),
        description="event types after which a lead can no longer convert (its programme ended, it unsubscribed"
        " for good): no longer sampled for training, scored 0 with status 'exited'",
    )
    conversion_type: str = "converted"
    profile_type: str = "profile_update"
    active_days_window: int = Field(default=30, ge=1, le=120)

    @field_validator("signals")
    @classmethod
    def _unique_signals(cls, signals: tuple[Signal, ...]) -> tuple[Signal, ...]:
        names = [s.name for s in signals]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"signal names must be unique; repeated: {duplicated}")
        return signals

    @field_validator("high_intent")
    @classmethod
    def _high_intent_signals_exist(cls, names: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        # A field validator, not a model one, so that the error points at `high_intent`; signals come first.
        if "signals" not in info.data:
            return names  # the signals are invalid themselves, and that is reported
        known = [s.name for s in info.data["signals"]]
        unknown = [name for name in names if name not in known]
        if unknown:
            hints = "".join(did_you_mean(name, known) for name in unknown)
            raise ValueError(f"high_intent names unknown signals: {unknown}{hints}")
        return names

    @cached_property
    def signals_by_type(self) -> dict[str, tuple[Signal, ...]]:
        """Event type -> the signals it may feed (the fold's lookup table)."""
        table: dict[str, list[Signal]] = {}
        for signal in self.signals:
            for event_type in signal.types:
                table.setdefault(event_type, []).append(signal)
        return {k: tuple(v) for k, v in table.items()}

    @cached_property
    def feature_origins(self) -> tuple[FeatureOrigin, ...]:
        """Every feature this spec defines with the entry defining it, in model column order."""
        return (
            *(FeatureOrigin(s.feature_name, ("signals", i, "name")) for i, s in enumerate(self.signals)),
            *(FeatureOrigin(f"{t}_count", ("counted_types", i)) for i, t in enumerate(self.counted_types)),
            *(FeatureOrigin(r.name, ("ratios", i, "name")) for i, r in enumerate(self.ratios)),
            *(FeatureOrigin(name, None) for name in BUILT_IN_FEATURES),
            *(FeatureOrigin(d.name, ("days_since", i, "name")) for i, d in enumerate(self.days_since)),
            *(
                FeatureOrigin(f"days_since_last_{t}", ("days_since_last", i))
                for i, t in enumerate(self.days_since_last)
            ),
            *(
                FeatureOrigin(a, ("numeric_profile_attributes", i))
                for i, a in enumerate(self.numeric_profile_attributes)
            ),
            *(FeatureOrigin(a, ("profile_attributes", i)) for i, a in enumerate(self.profile_attributes)),
        )

    @cached_property
    def feature_names(self) -> tuple[str, ...]:
        """Every feature this spec defines, in model column order (models.vector computes them)."""
        return tuple(origin.name for origin in self.feature_origins)

    @cached_property
    def event_type_entries(self) -> tuple[EventTypeEntry, ...]:
        """Each place the spec names an event type that feeds a feature: signal types, counted types, ratios."""
        entries = [
            EventTypeEntry(t, ("signals", i, "types", j), f"signal {s.name!r} type")
            for i, s in enumerate(self.signals)
            for j, t in enumerate(s.types)
        ]
        entries += [EventTypeEntry(t, ("counted_types", i), "counted type") for i, t in enumerate(self.counted_types)]
        entries += [
            EventTypeEntry(t, ("days_since_last", i), "days_since_last type")
            for i, t in enumerate(self.days_since_last)
        ]
        entries += [EventTypeEntry(t, ("exit_types", i), "exit type") for i, t in enumerate(self.exit_types)]
        for i, r in enumerate(self.ratios):
            entries.append(EventTypeEntry(r.numerator, ("ratios", i, "numerator"), f"ratio {r.name!r} numerator"))
            entries.append(EventTypeEntry(r.denominator, ("ratios", i, "denominator"), f"ratio {r.name!r} denominator"))
        return tuple(entries)

    @cached_property
    def event_types(self) -> frozenset[str]:
        """Every event type the spec names: the ones feeding features, the conversion and the profile type."""
        return frozenset(e.event_type for e in self.event_type_entries) | {self.conversion_type, self.profile_type}

    @cached_property
    def high_intent_names(self) -> frozenset[str]:
        return frozenset(self.high_intent)

    @cached_property
    def matchers_by_type(self) -> dict[str, tuple[SignalMatcher, ...]]:
        """`signals_by_type` compiled for the fold: plain tuples, no model attribute lookups per event."""
        return {
            event_type: tuple(
                SignalMatcher(
                    s.name,
                    s.half_life_ms or 0,
                    tuple(s.where.items()),
                    s.name in self.high_intent_names,
                    s.value,
                    s.aggregate,
                    s.decays,
                )
                for s in signals
            )
            for event_type, signals in self.signals_by_type.items()
        }

    @cached_property
    def property_keys_by_type(self) -> dict[str, frozenset[str]]:
        """Event type -> the properties the fold reads from its events (filters and values): what training keeps
        of an event. A profile update's properties are all read."""
        keys: dict[str, set[str]] = {}
        for signal in self.signals:
            for event_type in signal.types:
                keys.setdefault(event_type, set()).update(signal.where)
                if signal.value is not None:
                    keys[event_type].add(signal.value)
        return {event_type: frozenset(names) for event_type, names in keys.items()}

    @cached_property
    def fold_plans(self) -> dict[str, FoldPlan]:
        """Event type -> everything the fold does with its events beyond counting them: one lookup per event.
        Types absent here are only counted."""
        types = {*self.matchers_by_type, *self.days_since_last, *self.exit_types, self.profile_type}
        return {
            event_type: FoldPlan(
                self.matchers_by_type.get(event_type, ()),
                event_type == self.profile_type,
                event_type in self.days_since_last,
                event_type in self.exit_types,
            )
            for event_type in types
        }

    @cached_property
    def half_life_by_signal(self) -> dict[str, int]:
        """Half-lives of the signals that decay (a last or max aggregate does not)."""
        return {s.name: s.half_life for s in self.signals if s.decays}

    @cached_property
    def config_hash(self) -> str:
        """Stable hash of the spec: a model records it so a changed config is noticed."""
        canonical = orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()[:16]


# --- the config file: read with the line of every entry, checked ---------------------------------------------------


class Severity(StrEnum):
    ERROR = "error"  # the config is refused
    WARNING = "warning"  # accepted, but very likely not what was meant


@dataclass(frozen=True)
class ConfigProblem:
    """One finding about a config file, at the line of its entry when the entry can be located."""

    severity: Severity
    file: Path
    line: int | None  # 1-based; None when it is about the file as a whole
    message: str

    @property
    def location(self) -> str:
        return str(self.file) if self.line is None else f"{self.file}:{self.line}"

    def __str__(self) -> str:
        return f"{self.location}: {self.severity}: {self.message}"


class ConfigError(ValueError):
    """A config file with errors; the message has one `file:line: message` line per error."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = tuple(p for p in problems if p.severity is Severity.ERROR)
        super().__init__("\n".join(f"{p.location}: {p.message}" for p in self.problems))


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """The hint "; did you mean 'x'?" naming the candidate most like `word`, or "" when none is alike enough."""
    close = difflib.get_close_matches(word, sorted({c for c in candidates if c != word}), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


def entry_text(loc: ConfigLoc) -> str:
    """An entry's place as a reader writes it: features.signals[3].half_life."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


@dataclass(frozen=True)
class ConfigDocument:
    """A config file's content and the line each of its entries is written on."""

    path: Path
    data: dict[str, Any]
    lines: Mapping[ConfigLoc, int]
    repeated: tuple[tuple[ConfigLoc, ConfigProblem], ...]  # keys written twice in one mapping

    def line_of(self, loc: ConfigLoc) -> int | None:
        """The line of the entry at `loc` or, if it is not written (a missing key), of the nearest one around it."""
        for end in range(len(loc), 0, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return None

    def error(self, loc: ConfigLoc, message: str) -> ConfigProblem:
        return ConfigProblem(Severity.ERROR, self.path, self.line_of(loc), message)

    def warning(self, loc: ConfigLoc, message: str) -> ConfigProblem:
        return ConfigProblem(Severity.WARNING, self.path, self.line_of(loc), message)

    def missing_section(self, name: str) -> ConfigProblem:
        return ConfigProblem(
            Severity.ERROR,
            self.path,
            None,
            f"no {name!r} section: a config needs 'features' and 'segments' (the shipped {DEFAULT_CONFIG_PATH.name} "
            "is an example)",
        )

    def repeated_keys(self, under: ConfigLoc = ()) -> list[ConfigProblem]:
        """Keys written twice inside the entry at `under` (YAML would keep the last one without a word)."""
        return [problem for loc, problem in self.repeated if loc[: len(under)] == under]

    def validation_problems(self, exc: ValidationError, model: type[BaseModel], at: ConfigLoc) -> list[ConfigProblem]:
        """Each error of validating the entry at `at` as `model`, at the line of the entry the error is about."""
        problems = []
        for error in exc.errors():
            inner: ConfigLoc = tuple(error["loc"])
            loc = at + inner
            if error["type"] == "extra_forbidden" and inner:
                key = str(inner[-1])
                hint = did_you_mean(key, _config_keys(_model_at(model, inner[:-1])))
                message = f"{entry_text(loc[:-1])}: unknown key {key!r}{hint}"
            elif error["type"] == "missing" and inner:
                key = _config_key(_model_at(model, inner[:-1]), inner[-1])
                message = f"{entry_text(loc[:-1])}: missing key {key!r}"
            else:
                message = f"{entry_text(loc)}: {error['msg'].removeprefix('Value error, ')}"
                given = error.get("input")
                if error["type"] != "value_error" and isinstance(given, str | int | float | bool | None):
                    message += f" (got {given!r})"
            problems.append(self.error(loc, message))
        return problems


def _model_at(model: type[BaseModel], loc: ConfigLoc) -> type[BaseModel] | None:
    """The model that validates the entry at `loc` inside `model` (None: not a model, e.g. a list of strings)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int):
            continue  # an item of a list field: the field's annotation already named the item's model
        field = current.model_fields.get(part)
        current = _model_in(field.annotation) if field is not None else None
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class in an annotation such as `tuple[Signal, ...]` or `list[Condition] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _config_key(model: type[BaseModel] | None, field: str | int) -> str:
    keys: Mapping[str, str] = getattr(model, "config_keys", {})
    return keys.get(str(field), str(field))


def _config_keys(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [_config_key(model, name) for name in model.model_fields]


def read_config_document(path: Path | None = None) -> ConfigDocument:
    """The config file (the shipped default when path is None) with the line of each entry.

    ConfigError, naming the file and the line, if it cannot be read or is not a YAML mapping.
    """
    source = path or DEFAULT_CONFIG_PATH

    def refused(line: int | None, message: str) -> ConfigError:
        return ConfigError([ConfigProblem(Severity.ERROR, source, line, message)])

    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise refused(None, f"cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise refused(None, f"the config file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines: dict[ConfigLoc, int] = {}
    repeated: list[tuple[ConfigLoc, int, int]] = []
    # One parse gives both the node tree (with marks) and the data built from it.
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _note_lines(root, (), lines, repeated, set())
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise refused(mark.line + 1 if mark is not None else None, _yaml_message(exc)) from None
    except yaml.YAMLError as exc:
        raise refused(None, f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a YAML {type(data).__name__}"
        raise refused(None, f"a config is a mapping with 'features' and 'segments' sections; this is {found}")
    twice = "is written twice (first at line {}); YAML keeps only the last one: remove or rename one"
    problems = tuple(
        (loc, ConfigProblem(Severity.ERROR, source, line, f"{entry_text(loc)} {twice.format(first)}"))
        for loc, line, first in repeated
    )
    return ConfigDocument(source, data, lines, problems)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _note_lines(
    node: yaml.Node,
    loc: ConfigLoc,
    lines: dict[ConfigLoc, int],
    repeated: list[tuple[ConfigLoc, int, int]],
    open_nodes: set[int],
) -> None:
    """Note the line of every entry under `node`, and each key written twice in one mapping."""
    if id(node) in open_nodes:
        return  # an alias of a node around it (a recursive document): its lines are being noted
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue  # keys merged in by `<<: *anchor` are located by the entry around them
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in first_line:
                repeated.append(((*loc, key), line, first_line[key]))
            first_line.setdefault(key, line)
            _note_lines(value_node, (*loc, key), lines, repeated, open_nodes)
            lines[(*loc, key)] = line  # the key's line is where a reader looks (a block value starts below it)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            _note_lines(item, (*loc, index), lines, repeated, open_nodes)
    open_nodes.discard(id(node))


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's problem and context as one sentence, without its '<unicode string>' locations."""
    problem, context = exc.problem or "", exc.context or ""
    if not problem or not context:
        return f"invalid YAML: {problem or context}"
    if not context.startswith("while"):
        return f"invalid YAML: {context}, {problem}"  # e.g. "expected a single document in the stream, but found ..."
    started = exc.context_mark
    if started is not None and (exc.problem_mark is None or started.line != exc.problem_mark.line):
        context += f" that starts at line {started.line + 1}"
    return f"invalid YAML: {problem} ({context})"


def check_features(document: ConfigDocument) -> tuple[FeatureSpec | None, list[ConfigProblem]]:
    """The `features` section as a FeatureSpec (None if it does not validate) and the problems found in it.

    Cross-section checks (event types the segment rules also name) are in `check_event_types`.
    """
    if "features" not in document.data:
        return None, [document.missing_section("features")]
    try:
        spec = FeatureSpec.model_validate(document.data["features"])
    except ValidationError as exc:
        return None, document.validation_problems(exc, FeatureSpec, ("features",))
    problems = [
        *_repeated_feature_names(document, spec),
        *_repeated_signal_types(document, spec),
        *_short_half_lives(document, spec),
        *_conversion_as_feature(document, spec),
    ]
    return spec, problems


def _repeated_feature_names(document: ConfigDocument, spec: FeatureSpec) -> Iterator[ConfigProblem]:
    # The model has one column per name: a repeated name makes two columns that code reads as one.
    first: dict[str, FeatureOrigin] = {}
    for origin in spec.feature_origins:
        earlier = first.setdefault(origin.name, origin)
        if earlier is origin:
            continue
        entry = origin.entry or earlier.entry  # the built-in names differ, so one of the two is written
        if entry is None:
            continue
        if origin.entry is not None and earlier.entry is not None:
            other = f"also made at line {document.line_of(('features', *earlier.entry))}"
        else:
            other = "a built-in feature"
        yield document.error(
            ("features", *entry),
            f"features.{entry_text(entry)} makes feature {origin.name!r}, which is {other}; "
            "feature names must be unique",
        )


def _repeated_signal_types(document: ConfigDocument, spec: FeatureSpec) -> Iterator[ConfigProblem]:
    for i, signal in enumerate(spec.signals):
        seen: set[str] = set()
        for j, event_type in enumerate(signal.types):
            if event_type in seen:
                yield document.error(
                    ("features", "signals", i, "types", j),
                    f"signal {signal.name!r} lists event type {event_type!r} twice: each such event would add twice",
                )
            seen.add(event_type)


def _short_half_lives(document: ConfigDocument, spec: FeatureSpec) -> Iterator[ConfigProblem]:
    # A duration written with a unit ("10s") is taken as meant; a bare number is milliseconds, rarely what is meant.
    written = document.data["features"].get("signals") or []
    for i, signal in enumerate(spec.signals):
        raw = written[i] if i < len(written) and isinstance(written[i], dict) else {}
        key = "half_life" if "half_life" in raw else "half_life_ms"
        short = signal.half_life_ms is not None and signal.half_life_ms < _SHORTEST_SENSIBLE_HALF_LIFE_MS
        if isinstance(raw.get(key), int | float) and short:
            yield document.warning(
                ("features", "signals", i, key),
                f"signal {signal.name!r} halves every {signal.half_life_ms} ms, so it fades away between events; "
                "a bare number is milliseconds: write a duration like '7d' or '12h'",
            )


def _conversion_as_feature(document: ConfigDocument, spec: FeatureSpec) -> Iterator[ConfigProblem]:
    # Training takes snapshots of a lead only before its first conversion (models.training.snapshots_at).
    for entry in spec.event_type_entries:
        if entry.event_type == spec.conversion_type:
            yield document.warning(
                ("features", *entry.entry),
                f"{entry.describe()} is the conversion_type: training sees leads only before they convert, so this "
                "feature is always 0 there and the model cannot learn from it",
            )


def check_event_types(document: ConfigDocument, spec: FeatureSpec, rule_types: Collection[str]) -> list[ConfigProblem]:
    """Warnings for event types that look misspelt, given the types the segment rules count (`count.<type>`)."""
    places = Counter(entry.event_type for entry in spec.event_type_entries)
    places.update({*rule_types, spec.conversion_type, spec.profile_type})
    problems = []
    for entry in spec.event_type_entries:
        if places[entry.event_type] > 1:
            continue  # named elsewhere too: a typo would have to be made twice
        hint = did_you_mean(entry.event_type, places, cutoff=_TYPO_LIKENESS)
        if hint:
            problems.append(
                document.warning(
                    ("features", *entry.entry),
                    f"{entry.describe()} appears nowhere else in the config{hint} "
                    "(a misspelt type makes a feature that is always 0)",
                )
            )
    named = {entry.event_type for entry in spec.event_type_entries} | set(rule_types)
    conversion = spec.conversion_type
    if conversion not in named:
        problems.append(
            document.warning(
                ("features", "conversion_type"),
                f"conversion_type {conversion!r} appears in no signal, counted type, ratio or segment rule"
                f"{did_you_mean(conversion, named)} (if producers never send this type, training finds no "
                "conversions)",
            )
        )
    return problems


def load_feature_spec(path: Path | None = None) -> FeatureSpec:
    """The `features` section of a config file (the shipped one when path is None), checked.

    ConfigError with each error's file and line; warnings are logged.
    """
    document = read_config_document(path)
    spec, problems = check_features(document)
    problems = [*document.repeated_keys(("features",)), *problems]
    if spec is None or any(p.severity is Severity.ERROR for p in problems):
        raise ConfigError(problems)
    for problem in problems:
        _log.warning("%s", problem)
    return spec


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """The whole YAML config (features + segments) as a mapping; the shipped default when path is None."""
    return read_config_document(path).data
