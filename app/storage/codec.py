"""A lead's stored record: its feature state, the Kafka offset fence and the latest score, packed.

One value per lead (`lead:{<id>}`), read with one MGET and written in one round trip per batch. A value
is a plain-text header and a binary body:

    2|<partition>|<offset>|<set>=<segment>,<set>=<segment>|<score>|<due ms>|<body>

The header carries what the write script (app/storage/write_batch.lua) needs without decoding the body: the
exactly-once fence (a write whose offset is not newer is refused), the segments to move the lead out of
and into, the score to rank it by and its due time. The leading version lets old values still decode
after the record's format changes (version 2 is the only one so far).

The version 2 body is positional by a RecordLayout, the names of a FeatureSpec, so a lead costs its
values and not its names (a typical lead: ~280 bytes, against ~660 as JSON).
Little-endian; S, C, P = the layout's signals, count types, profile attributes:

    bytes                   field
    4                       layout fingerprint (blake2b of the layout's names)
    1                       flags: 1 = model_version present, 2 = one profile time stands for every attribute
    S, C, P mask bytes      presence masks: bit i = the layout's i-th signal / count type / attribute is set
    8 x 4                   anchor_ms, first_event_ms, last_high_intent_ms, scored_ms (int64)
    window bits             active_days bitmap (bit i = active on the anchor's day - i)
    2, 2                    model_version length, recent_event_ids length (uint16)
    8 each                  decayed value of each signal present (float64), layout order
    4 each                  count of each count type present (uint32), layout order
    1 each                  UTF-8 length of each profile attribute present
    8, or 8 each            the profile time(s) (int64)
    variable                the profile values (UTF-8), model_version (UTF-8), recent_event_ids
    rest                    what the layout has no place for (event types it does not know, `_other`, other
                            profile attributes): orjson {"c", "d", "p", "pt", "ad"}; and the state fields only
                            some configs use: {"v", "vt" (last/max values and times), "l" (last time by type),
                            "x" (exit time), "iv" (invalid values)}; empty when there is none

A mask or the bitmap takes the smallest of 1, 2, 4 or 8 bytes that holds its bits (default config: masks
of 2, 2 and 1 bytes, a 4-byte bitmap); past 64 bits it takes exactly (bits + 7) // 8 bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

from app.domain.lead import LeadRecord
from models.spec import FeatureSpec, load_feature_spec
from models.state import LeadState

RECORD_VERSION = 2
_VERSION = b"%d" % RECORD_VERSION
_HEADER_FIELDS = 6
FINGERPRINT_BYTES = 4

_HAS_MODEL_VERSION = 1
_ONE_PROFILE_TIME = 2
# Plans are cached per sequence of names a record has (and per set of presence masks read); producers
# inventing event types make new ones, so each cache is emptied when it reaches this size.
_MAX_PLANS = 4096
_NATIVE_WIDTHS = {1: "B", 2: "H", 4: "I", 8: "Q"}
_HEAD_FIELDS = 12  # fingerprint .. recent_event_ids length
_U32_MAX = 0xFFFF_FFFF
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_MAX_PROFILE_VALUE_BYTES = 255


class RecordDecodeError(ValueError):
    """A stored value that is not a lead record this version understands."""


class UnknownRecordLayout(RecordDecodeError):
    """A version 2 value written under a record layout this codec has not been given."""

    def __init__(self, lead_id: str, fingerprint: bytes, detail: str = "") -> None:
        self.lead_id = lead_id
        self.fingerprint = fingerprint
        super().__init__(
            f"lead {lead_id}: stored under record layout {fingerprint.hex()}, which this process does not know"
            + (f"; {detail}" if detail else "")
        )


Getter = Callable[[Mapping[str, Any]], Iterable[Any]]
NamedGetter = Callable[[Mapping[str, Any]], tuple[Any, ...]]


class _Plan(NamedTuple):
    """How a section of a layout packs a mapping with given keys (cached per key sequence)."""

    mask: int  # presence mask
    placed: int  # how many present names the layout has a place for
    values: Getter  # their values, in layout order
    by_name: NamedGetter  # the same for another mapping with those keys (profile times)
    extra: tuple[str, ...]  # present names the layout has no place for


def _getter(names: tuple[str, ...]) -> NamedGetter:
    if not names:
        return lambda _: ()
    if len(names) == 1:
        (name,) = names
        return lambda values: (values[name],)
    get: NamedGetter = itemgetter(*names)
    return get


class _Section:
    """One section of a layout (signals, count types or profile attributes): its names in order."""

    __slots__ = ("_bits", "names", "plans")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._bits = {name: 1 << i for i, name in enumerate(names)}
        self.plans: dict[tuple[str, ...], _Plan] = {}

    def plan(self, values: Mapping[str, object]) -> _Plan:
        # Keyed by the keys in their order: decoded mappings come in layout order, and then a record's
        # values are the mapping's values as they are.
        keys = tuple(values)
        plan = self.plans.get(keys)
        if plan is None:
            if len(self.plans) >= _MAX_PLANS:
                self.plans.clear()
            bits = self._bits
            present = tuple(name for name in self.names if name in values)
            by_name = _getter(present)
            in_order: Getter = dict.values  # type: ignore[assignment]
            plan = _Plan(
                sum(bits[n] for n in present),
                len(present),
                in_order if keys == present else by_name,
                by_name,
                tuple(name for name in keys if name not in bits),
            )
            self.plans[keys] = plan
        return plan

    def names_of(self, mask: int) -> tuple[str, ...]:
        if mask >> len(self.names):
            raise ValueError(f"presence mask {mask:#x} has bits past the layout's {len(self.names)} names")
        return tuple(name for i, name in enumerate(self.names) if mask >> i & 1)


class _Reading(NamedTuple):
    """How to read a body with given flags and presence masks (cached per distinct flags and masks)."""

    body: struct.Struct
    signals: tuple[str, ...]
    count_types: tuple[str, ...]
    attributes: tuple[str, ...]
    one_time: bool
    has_model_version: bool
    counts_at: int  # indexes into the unpacked values
    lengths_at: int
    times_at: int


def _int_field(bits: int) -> tuple[str, int]:
    """Struct format of an unsigned field of `bits` bits, and its width in bytes if stored as bytes (else 0)."""
    width = max((bits + 7) // 8, 1)
    for native, char in _NATIVE_WIDTHS.items():
        if width <= native:
            return char, 0
    return f"{width}s", width


class RecordLayout:
    """The names a version 2 body has a place for, in order, fingerprinted so each value names its layout.

    Derived from a FeatureSpec: its signals (decayed values), the event types it counts or reads, its
    profile attributes and its active-days window. Two specs with the same names share a layout.
    """

    def __init__(
        self,
        signals: tuple[str, ...],
        count_types: tuple[str, ...],
        profile_attributes: tuple[str, ...],
        active_days_window: int,
    ) -> None:
        self.signals = _Section(tuple(dict.fromkeys(signals)))
        self.count_types = _Section(tuple(dict.fromkeys(count_types)))
        self.profile_attributes = _Section(tuple(dict.fromkeys(profile_attributes)))
        self.active_days_window = active_days_window
        self._signal_plans = self.signals.plans
        self._count_plans = self.count_types.plans
        self._attribute_plans = self.profile_attributes.plans
        self.fingerprint = hashlib.blake2b(self.to_json(), digest_size=FINGERPRINT_BYTES).digest()
        masks = [
            _int_field(len(section.names)) for section in (self.signals, self.count_types, self.profile_attributes)
        ]
        active_days_format, active_days_width = _int_field(active_days_window)
        self._active_days_width = active_days_width
        self._active_days_bits = 8 * (active_days_width or struct.calcsize(active_days_format))
        self._mask_widths = tuple(width for _, width in masks)
        self._flags_and_masks = struct.Struct("<B" + "".join(char for char, _ in masks))
        self._flags_at = FINGERPRINT_BYTES
        self._masks_end = FINGERPRINT_BYTES + self._flags_and_masks.size
        self._head_format = f"<{FINGERPRINT_BYTES}s{self._flags_and_masks.format[1:]}qqqq{active_days_format}HH"
        self._wide = any(self._mask_widths) or bool(active_days_width)
        self._bodies: dict[tuple[int, int, int, int], struct.Struct] = {}
        self._readings: dict[bytes, _Reading] = {}

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> RecordLayout:
        signal_types = (t for signal in spec.signals for t in signal.types)
        count_types = dict.fromkeys((*spec.counted_types, spec.conversion_type, spec.profile_type, *signal_types))
        return cls(
            tuple(s.name for s in spec.signals),
            tuple(count_types),
            spec.profile_attributes,
            spec.active_days_window,
        )

    def to_json(self) -> bytes:
        """The layout's names: what its fingerprint hashes, and what LeadStore registers in Redis."""
        return orjson.dumps(
            {
                "signals": self.signals.names,
                "count_types": self.count_types.names,
                "profile_attributes": self.profile_attributes.names,
                "active_days_window": self.active_days_window,
            },
            option=orjson.OPT_SORT_KEYS,
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> RecordLayout:
        """A layout from `to_json` output; ValueError if it is not one."""
        try:
            names = orjson.loads(raw)
            sections = [names["signals"], names["count_types"], names["profile_attributes"]]
            window = names["active_days_window"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a record layout: {exc}") from None
        if not all(isinstance(s, list) and all(isinstance(n, str) for n in s) for s in sections):
            raise ValueError("not a record layout: its name lists must be lists of strings")
        if type(window) is not int or window < 1:
            raise ValueError(f"not a record layout: active_days_window {window!r} is not a positive integer")
        signals, count_types, attributes = (tuple(s) for s in sections)
        return cls(signals, count_types, attributes, window)

    def _body(self, signals: int, counts: int, attributes: int, times: int) -> struct.Struct:
        key = (signals, counts, attributes, times)
        body = self._bodies.get(key)
        if body is None:
            body = self._bodies[key] = struct.Struct(f"{self._head_format}{signals}d{counts}I{attributes}B{times}q")
        return body

    def pack(self, record: LeadRecord, header: bytes = b"") -> bytes:
        """`header` followed by the version 2 body of `record`."""
        try:
            return self._pack(record, record.state, None, header)
        except (struct.error, OverflowError, AttributeError, TypeError, KeyError):
            # a value the fixed places cannot hold (a huge count, a long non-ASCII profile value, an attribute
            # without its time, ...)
            fitting, misfits = _split_misfits(record.state, self._active_days_bits)
            try:
                return self._pack(record, fitting, misfits, header)
            except (struct.error, OverflowError, AttributeError, TypeError, KeyError) as exc:
                raise ValueError(f"lead {record.lead_id}: record cannot be encoded ({exc})") from None

    def _pack(self, record: LeadRecord, state: LeadState, misfits: dict[str, Any] | None, header: bytes) -> bytes:
        decayed, counts, profile, profile_ms = state.decayed, state.counts, state.profile, state.profile_ms
        # the cached plans are looked up here, not through _Section.plan: this is the hot path
        signals = self._signal_plans.get(tuple(decayed)) or self.signals.plan(decayed)
        count_types = self._count_plans.get(tuple(counts)) or self.count_types.plan(counts)
        if len(profile) != len(profile_ms):
            profile, profile_ms = {}, {}  # an attribute without its time (or the reverse): all go to the rest
        attributes = self._attribute_plans.get(tuple(profile)) or self.profile_attributes.plan(profile)
        texts = attributes.by_name(profile)
        joined = "".join(texts)
        profile_bytes = joined.encode()
        # ASCII (the usual case): each value's length in bytes is its length in characters
        lengths = map(len, texts if len(profile_bytes) == len(joined) else map(str.encode, texts))
        times = attributes.by_name(profile_ms)
        flags = 0
        na = attributes.placed
        if na > 1 and times.count(times[0]) == na:
            flags = _ONE_PROFILE_TIME
            times = times[:1]
        model_version = record.model_version
        if model_version is None:
            version_bytes = b""
        else:
            flags |= _HAS_MODEL_VERSION
            version_bytes = model_version.encode()
        rest = b""
        if (
            misfits
            or signals.extra
            or count_types.extra
            or attributes.extra
            or profile is not state.profile
            or state.uses_extensions
        ):
            rest = _rest(state, signals.extra, count_types.extra, attributes.extra, misfits, profile is state.profile)
        recent = record.recent_event_ids
        masks: tuple[Any, ...] = (signals.mask, count_types.mask, attributes.mask)
        active_days: Any = state.active_days
        if self._wide:
            masks = tuple(m.to_bytes(w, "little") if w else m for m, w in zip(masks, self._mask_widths, strict=True))
            if self._active_days_width:
                active_days = active_days.to_bytes(self._active_days_width, "little")
        shape = (signals.placed, count_types.placed, na, len(times))
        body = self._bodies.get(shape) or self._body(*shape)
        packed = body.pack(
            self.fingerprint,
            flags,
            *masks,
            state.anchor_ms,
            state.first_event_ms,
            state.last_high_intent_ms,
            record.scored_ms,
            active_days,
            len(version_bytes),
            len(recent),
            *signals.values(decayed),
            *count_types.values(counts),
            *lengths,
            *times,
        )
        return b"".join((header, packed, profile_bytes, version_bytes, recent, rest))

    def _reading(self, key: bytes) -> _Reading:
        flags, *fields = self._flags_and_masks.unpack(key)
        masks = [int.from_bytes(f, "little") if w else f for f, w in zip(fields, self._mask_widths, strict=True)]
        signals = self.signals.names_of(masks[0])
        count_types = self.count_types.names_of(masks[1])
        attributes = self.profile_attributes.names_of(masks[2])
        one_time = bool(flags & _ONE_PROFILE_TIME) and len(attributes) > 0
        body = self._body(len(signals), len(count_types), len(attributes), 1 if one_time else len(attributes))
        counts_at = _HEAD_FIELDS + len(signals)
        lengths_at = counts_at + len(count_types)
        reading = _Reading(
            body,
            signals,
            count_types,
            attributes,
            one_time,
            bool(flags & _HAS_MODEL_VERSION),
            counts_at,
            lengths_at,
            lengths_at + len(attributes),
        )
        if len(self._readings) >= _MAX_PLANS:
            self._readings.clear()
        self._readings[key] = reading
        return reading

    def unpack(self, body: bytes) -> tuple[LeadState, str | None, int, bytes]:
        """(state, model_version, scored_ms, recent_event_ids) of a version 2 body; ValueError, struct.error,
        KeyError or TypeError if it is not one."""
        key = body[self._flags_at : self._masks_end]
        reading = self._readings.get(key) or self._reading(key)
        layout, signals, count_types, attributes, one_time, has_model_version, counts_at, lengths_at, times_at = reading
        values = layout.unpack_from(body)
        anchor, first, high_intent, scored_ms, active_days, version_length, recent_length = values[5:_HEAD_FIELDS]
        if self._active_days_width:
            active_days = int.from_bytes(active_days, "little")
        decayed = dict(zip(signals, values[_HEAD_FIELDS:counts_at], strict=False))
        counts = dict(zip(count_types, values[counts_at:lengths_at], strict=False))
        times = values[times_at:]
        profile_ms = dict.fromkeys(attributes, times[0]) if one_time else dict(zip(attributes, times, strict=False))
        profile = {}
        pos = layout.size
        for name, length in zip(attributes, values[lengths_at:times_at], strict=False):
            end = pos + length
            profile[name] = body[pos:end].decode()
            pos = end
        end = pos + version_length
        model_version = body[pos:end].decode() if has_model_version else None
        pos, end = end, end + recent_length
        recent = body[pos:end]
        if end > len(body):
            raise ValueError(f"body is {len(body)} bytes, shorter than the {end} its lengths add up to")
        state = LeadState(counts, decayed, anchor, first, high_intent, active_days, profile, profile_ms)
        if end < len(body):
            _merge_rest(state, body[end:])
        return state, model_version, scored_ms, recent


def _rest(
    state: LeadState,
    signals: tuple[str, ...],
    count_types: tuple[str, ...],
    attributes: tuple[str, ...],
    misfits: dict[str, Any] | None,
    profile_placed: bool,
) -> bytes:
    """The trailing section: values of names the layout has no place for (and misfits), as compact JSON."""
    rest: dict[str, Any] = dict(misfits or {})
    if signals:
        rest["d"] = {**rest.get("d", {}), **{name: state.decayed[name] for name in signals}}
    if count_types:
        rest["c"] = {**rest.get("c", {}), **{name: state.counts[name] for name in count_types}}
    if profile_placed:
        profile = {name: state.profile[name] for name in attributes}
        profile_ms = {name: state.profile_ms[name] for name in attributes}
    else:
        profile, profile_ms = state.profile, state.profile_ms
    if profile:
        rest["p"] = {**rest.get("p", {}), **profile}
    if profile_ms:
        rest["pt"] = {**rest.get("pt", {}), **profile_ms}
    if state.uses_extensions:
        rest.update(_extensions(state))
    return orjson.dumps(rest)


def _extensions(state: LeadState) -> dict[str, Any]:
    kept = {
        "v": state.values,
        "vt": state.values_ms,
        "l": state.last_ms,
        "x": state.exited_ms,
        "iv": state.invalid_values,
    }
    return {key: value for key, value in kept.items() if value}


def _merge_rest(state: LeadState, raw: bytes) -> None:
    rest = orjson.loads(raw)
    if not isinstance(rest, dict):
        raise ValueError("the trailing section is not a JSON object")
    state.decayed.update(rest.get("d", {}))
    state.counts.update(rest.get("c", {}))
    state.profile.update(rest.get("p", {}))
    state.profile_ms.update(rest.get("pt", {}))
    if "ad" in rest:
        state.active_days = int(rest["ad"])
    state.values.update(rest.get("v", {}))
    state.values_ms.update(rest.get("vt", {}))
    state.last_ms.update(rest.get("l", {}))
    state.exited_ms = int(rest.get("x", 0))
    state.invalid_values.update(rest.get("iv", {}))


def _split_misfits(state: LeadState, active_days_bits: int) -> tuple[LeadState, dict[str, Any]]:
    """The state with only values its layout's fixed places can hold, and the others (for the trailing JSON)."""
    fitting = state.copy()
    misfits: dict[str, Any] = {}
    bad_decayed = {n: v for n, v in state.decayed.items() if type(v) is not float}
    bad_counts = {n: v for n, v in state.counts.items() if type(v) is not int or not 0 <= v <= _U32_MAX}
    bad_profile = [
        name
        for name, value in state.profile.items()
        if not isinstance(value, str)
        or len(value.encode()) > _MAX_PROFILE_VALUE_BYTES
        or type(state.profile_ms.get(name)) is not int
        or not _I64_MIN <= state.profile_ms[name] <= _I64_MAX
    ]
    for name in bad_decayed:
        del fitting.decayed[name]
    for name in bad_counts:
        del fitting.counts[name]
    for name in bad_profile:
        del fitting.profile[name]
        fitting.profile_ms.pop(name, None)
    if bad_decayed:
        misfits["d"] = bad_decayed
    if bad_counts:
        misfits["c"] = bad_counts
    if bad_profile:
        misfits["p"] = {name: state.profile[name] for name in bad_profile}
        misfits["pt"] = {name: state.profile_ms[name] for name in bad_profile if name in state.profile_ms}
    if not 0 <= state.active_days < 1 << active_days_bits:
        misfits["ad"] = state.active_days
        fitting.active_days = 0
    return fitting, misfits


class RecordCodec:
    """Encodes records under its own layout; decodes values of every layout it has been given.

    A process encodes with the layout of its own FeatureSpec. Values written by a process with another spec
    name another layout's fingerprint: `add_layout` it (LeadStore fetches it from Redis) and they decode.
    """

    def __init__(self, layout: RecordLayout) -> None:
        self.layout = layout
        self._layouts = {layout.fingerprint: layout}

    @classmethod
    def for_spec(cls, spec: FeatureSpec) -> RecordCodec:
        return cls(RecordLayout.from_spec(spec))

    def add_layout(self, layout: RecordLayout) -> None:
        self._layouts[layout.fingerprint] = layout

    def knows(self, fingerprint: bytes) -> bool:
        return fingerprint in self._layouts

    def encode(self, record: LeadRecord) -> bytes:
        score = b"" if record.score is None else repr(record.score).encode()
        due = b"" if record.due_ms is None else b"%d" % record.due_ms
        segments = encode_segments(record.segments)
        header = b"%d|%d|%d|%s|%s|%s|" % (RECORD_VERSION, record.partition, record.offset, segments, score, due)
        return self.layout.pack(record, header)

    def decode(self, lead_id: str, raw: bytes | str) -> LeadRecord:
        """The record in a stored value. RecordDecodeError naming the lead if it is not one; its subclass
        UnknownRecordLayout (carrying the fingerprint) if it was written under a layout not given here."""
        data = raw.encode() if isinstance(raw, str) else raw
        try:
            parts = data.split(b"|", _HEADER_FIELDS)
            version = parts[0]
            if version != _VERSION:
                if not version.isdigit():
                    raise ValueError("it does not start with a record version")
                raise RecordDecodeError(
                    f"lead {lead_id}: record version {int(version)} is not one this service reads ({RECORD_VERSION})"
                )
            if len(parts) != _HEADER_FIELDS + 1:
                raise ValueError("its header does not have six fields")
            _, partition, offset, segments, score, due, body = parts
            layout = self._layouts.get(body[:FINGERPRINT_BYTES])
            if layout is None:
                if len(body) < FINGERPRINT_BYTES:
                    raise ValueError("its body is too short to name a layout")
                raise UnknownRecordLayout(lead_id, body[:FINGERPRINT_BYTES])
            state, model_version, scored_ms, recent = layout.unpack(body)
            return LeadRecord(
                lead_id,
                state,
                int(partition),
                int(offset),
                float(score) if score else None,
                decode_segments(segments),
                model_version,
                scored_ms,
                recent,
                int(due) if due else None,
            )
        except RecordDecodeError:
            raise
        except (struct.error, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise RecordDecodeError(f"lead {lead_id}: stored value is not a lead record ({exc})") from None


# Leads share a handful of segment combinations: their header text is cached both ways.
_segment_headers: dict[tuple[tuple[str, str], ...], bytes] = {}
_segment_maps: dict[bytes, dict[str, str]] = {}


def encode_segments(segments: dict[str, str]) -> bytes:
    key = tuple(segments.items())
    header = _segment_headers.get(key)
    if header is None:
        header = ",".join(f"{name}={segment}" for name, segment in key).encode()
        if len(_segment_headers) >= _MAX_PLANS:
            _segment_headers.clear()
        _segment_headers[key] = header
    return header


def decode_segments(header: bytes) -> dict[str, str]:
    segments = _segment_maps.get(header)
    if segments is None:
        segments = dict(part.split("=", 1) for part in header.decode().split(",")) if header else {}
        if len(_segment_maps) >= _MAX_PLANS:
            _segment_maps.clear()
        _segment_maps[header] = segments
    return dict(segments)  # the caller may change its record's segments


@cache
def default_codec() -> RecordCodec:
    """The codec of the shipped feature config (tools and tests; the service uses its store's codec)."""
    return RecordCodec.for_spec(load_feature_spec())
