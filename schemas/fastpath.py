"""A fast path for the common case: a well-formed event, accepted in one pass.

`parse_payload` explains every problem of an event and builds a `UsageEvent`;
that costs about 30 µs an event, most of a batch recompute. `FastAccept`
recognises the shape nearly every real event has (string attributes within
limits, printable and not starting with a space, `specversion` 1.0, a plain
RFC 3339 time, JSON `data` (no data_base64, datacontenttype absent or application/json),
meters read by top-level `data` keys with int or decimal-string
values, plain dimension values, few enough brackets that nesting cannot exceed
the limit) and returns just what the recompute needs. On anything else it returns None and
the caller runs the full validator, so every rejection, and every unusual but
valid event, still gets the full treatment. The tests check that it accepts
only what `parse_payload` accepts, with the same readings, on messy and
random input.
"""
from __future__ import annotations

import re

import orjson

from schemas.aggregation import Aggregation
from schemas.catalog import MAX_TEXT_LENGTH, Meter, MeterCatalog
from schemas.events import MAX_DEPTH, SPECVERSION, Limits, dimensions_json
from schemas.values import (MAX_TIME_NS, NS, NUMERIC_MAX_INTEGER_DIGITS,
                            ValueProblem, format_decimal, parse_decimal, parse_rfc3339)

# What follows "YYYY-MM-DDTHH:MM" in a plain time: seconds, 1-9 fraction digits, offset.
_TAIL = re.compile(r":(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII)
# A decimal string whose canonical text can be had by trimming zeros: within NUMERIC
# (and so BIGNUMERIC), non-negative, at most 9 fraction digits.
_PLAIN_DECIMAL = re.compile(r"(\d{1,%d})(?:\.(\d{1,9}))?\Z" % NUMERIC_MAX_INTEGER_DIGITS, re.ASCII)
_TAIL_LENGTH = len(":00.000000000+00:00")
_NS_PER_MINUTE = 60 * NS
_UNREMARKABLE = bytes(b for b in range(0x80) if b not in b"{[\\\x7f")
_UNSEEN = object()
_INT_LIMIT = 10 ** NUMERIC_MAX_INTEGER_DIGITS  # within NUMERIC and BIGNUMERIC alike
_CACHE_SIZE = 100_000
_JSON = "application/json"


class FastAccept:
    """`accept(payload, now_ns)` -> (source, id, type, subject, time_ns, readings) or None.

    Readings are (meter, dimensions JSON, value) with the value as canonical
    decimal text (numeric meters), text (UNIQUE_COUNT) or None (COUNT), as
    the recompute compares and aggregates them.
    """

    def __init__(self, catalog: MeterCatalog, limits: Limits):
        self._max_length = limits.max_identifier_length
        self._skew = limits.max_future_skew_ns
        self._readers = {event_type: _type_reader(meters)
                         for event_type, meters in catalog.by_type.items()}
        self._minutes: dict[tuple[str, str], int | None] = {}
        self._tails: dict[str, tuple[int, str] | None] = {}

    def accept(self, payload: bytes, now_ns: int):
        # One pass in C keeps the bytes that matter: at most MAX_DEPTH brackets cannot
        # nest deeper, and ASCII without escapes or DEL cannot spell a control or bidi
        # character (JSON strings hold no raw C0 controls).
        remarkable = payload.translate(None, _UNREMARKABLE)
        if (len(remarkable) > MAX_DEPTH
                and remarkable.count(b"{") + remarkable.count(b"[") > MAX_DEPTH):
            return None
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if type(obj) is not dict or obj.get("specversion") != SPECVERSION:
            return None
        if "data_base64" in obj or obj.get("datacontenttype", _JSON) != _JSON:
            return None  # the data is not plain JSON `data`: the validator decides
        get, limit = obj.get, self._max_length
        source, event_id, event_type, subject = get("source"), get("id"), get("type"), get("subject")
        if not (type(source) is str and type(event_id) is str and type(event_type) is str
                and type(subject) is str and 0 < len(source) <= limit
                and 0 < len(event_id) <= limit and 0 < len(event_type) <= limit
                and 0 < len(subject) <= limit
                and (not remarkable.strip(b"{[")
                     or (source + event_id + event_type + subject).isprintable())
                and " " not in (source[0], event_id[0], event_type[0], subject[0])):
            return None
        time_ns = self._time(get("time"))
        if time_ns is None or time_ns > now_ns + self._skew:
            return None
        reader = self._readers.get(event_type)
        if reader is None:
            return source, event_id, event_type, subject, time_ns, ()
        readings = reader(get("data"))
        if readings is None:
            return None
        return source, event_id, event_type, subject, time_ns, readings

    def _time(self, text):
        """Nanoseconds of a plain RFC 3339 time, from two memos: the first 16 characters
        (date, hour, minute) with the offset, validated once per minute, and the rest
        (seconds, fraction, offset), validated once per spelling."""
        if type(text) is not str or len(text) > 16 + _TAIL_LENGTH:
            return None
        tail = text[16:]
        rest = self._tails.get(tail, _UNSEEN)
        if rest is _UNSEEN:
            m = _TAIL.match(tail)
            rest = None if m is None else (int(m[1]) * NS
                                           + int((m[2] or "").ljust(9, "0")), m[3])
            if rest is not None and rest[0] >= _NS_PER_MINUTE:
                rest = None
            _remember(self._tails, tail, rest)
        if rest is None:
            return None
        within, offset = rest
        key = (text[:16], offset)
        base = self._minutes.get(key, _UNSEEN)
        if base is _UNSEEN:
            try:
                base = parse_rfc3339(f"{key[0]}:00{offset}")
            except ValueError:
                base = None
            _remember(self._minutes, key, base)
        if base is None:
            return None
        nanos = base + within
        return nanos if nanos <= MAX_TIME_NS else None


def _type_reader(meters: tuple[Meter, ...]):
    """A function reading all meters of one event type from `data`, or returning None
    when the full validator must decide (an event type with a nested path always does).

    The dimensions of all its meters are memoised together, by the group-by values
    (most meters of a type group by the same few properties)."""
    paths = [path for meter in meters for _, path in meter.group_by]
    paths += [meter.value_property for meter in meters if meter.value_property]
    if any(len(p.steps) != 1 or not isinstance(p.steps[0], str) for p in paths):
        return lambda data: None
    keys = tuple(meter.key for meter in meters)
    value_readers = tuple(_value_reader(meter) for meter in meters)
    props = tuple(sorted({path.steps[0] for meter in meters for _, path in meter.group_by}))
    cache: dict[tuple, tuple[str, ...]] = {}

    def dimensions_of(values: tuple) -> tuple[str, ...]:
        """The validator's own dimensions of plain values (memoised by the caller)."""
        found = dict(zip(props, values))
        return tuple(dimensions_json(meter.read_dimensions(found)) for meter in meters)

    single = props[0] if len(props) == 1 else None

    def read(data):
        if type(data) is not dict:
            return None
        if single:
            value = data.get(single)
            kind = type(value)
            if kind not in _PLAIN:
                return None
            key = (kind, value)  # True == 1, but they are different dimensions
        elif props:
            values = tuple(map(data.get, props))
            kinds = tuple(map(type, values))
            if not _PLAIN.issuperset(kinds):
                return None
            key = kinds + values
        else:
            key = ()
        dimensions = cache.get(key)
        if dimensions is None:
            try:
                dimensions = _remember(cache, key, dimensions_of(key[len(key) // 2:]))
            except ValueProblem:  # a value too long to be a dimension
                return None
        readings = []
        for meter, value_of, meter_dimensions in zip(keys, value_readers, dimensions):
            value = value_of(data)
            if value is _SLOW:
                return None
            readings.append((meter, meter_dimensions, value))
        return tuple(readings)

    return read


_SLOW = object()


def _value_reader(meter: Meter):
    if meter.aggregation == Aggregation.COUNT:
        return lambda data: None
    prop = meter.value_property.steps[0]
    if meter.aggregation == Aggregation.UNIQUE_COUNT:
        def unique_text(data):
            value = data.get(prop)
            kind = type(value)
            if kind is str:
                return value if len(value) <= MAX_TEXT_LENGTH else _SLOW
            return str(value) if kind is int else _SLOW
        return unique_text
    precision, allow_negative = meter.precision, meter.allow_negative
    lowest = -_INT_LIMIT if allow_negative else 0
    plain = _PLAIN_DECIMAL.match

    def decimal_text(data):
        value = data.get(prop)
        kind = type(value)
        if kind is int:
            return str(value) if lowest <= value < _INT_LIMIT else _SLOW
        if kind is str:
            m = plain(value)
            if m is not None:
                whole, fraction = m[1].lstrip("0") or "0", (m[2] or "").rstrip("0")
                return f"{whole}.{fraction}" if fraction else whole
            try:
                return format_decimal(parse_decimal(value, precision=precision,
                                                    allow_negative=allow_negative))
            except ValueProblem:
                return _SLOW
        return _SLOW
    return decimal_text


_PLAIN = frozenset({str, int, bool, type(None)})


def _remember(cache: dict, key, value):
    """Stores `value` under `key` while the memo is below its size limit; returns value."""
    if len(cache) < _CACHE_SIZE:
        cache[key] = value
    return value
