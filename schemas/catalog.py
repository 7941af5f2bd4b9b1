"""The meter catalog (SPEC §2): which events feed which meters, and how.

A meter is a small validated value type, like OpenMeter's: key, event type,
aggregation, value property and group-by, all checked on load with an error
that names the meter and the field. Reading a meter's value out of an event
lives here too, as a pure function, because it is the catalog that says what
a valid value is.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from decimal import Decimal

import yaml

from schemas.aggregation import Aggregation
from schemas.values import (UnrepresentableNumber, ValueProblem, format_decimal, parse_decimal,
                           plain_length)

AGGREGATIONS = tuple(Aggregation)
PRECISIONS = ("NUMERIC", "BIGNUMERIC")

_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_DIMENSION = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_PATH_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\['((?:[^'\\]|\\.)*)'\]|\[(\d+)\]")
_MEMBERS = {"key", "event_type", "aggregation", "value_property", "group_by", "unit",
            "description", "precision", "allow_negative"}

MISSING = object()
# The longest text a meter reads as a dimension or a UNIQUE_COUNT value. Bounds what
# one event can add to a usage key, a row and the accumulator sets in memory.
MAX_TEXT_LENGTH = 1024


class CatalogError(ValueError):
    """The catalog is invalid; the message names the meter and the field."""


@dataclass(frozen=True)
class JsonPath:
    """The JSONPath subset meters use: `$.a.b`, `$['a b']`, `$.items[0]`."""

    text: str
    steps: tuple

    @classmethod
    def parse(cls, text: str) -> "JsonPath":
        if not isinstance(text, str) or not text.startswith("$") or text == "$":
            raise ValueError(f"{text!r} is not a JSONPath like $.field or $.a.b")
        steps, pos = [], 1
        while pos < len(text):
            m = _PATH_STEP.match(text, pos)
            if not m:
                raise ValueError(f"{text!r}: cannot read the path at {text[pos:]!r}")
            name, quoted, index = m.groups()
            if name is not None:
                steps.append(name)
            elif quoted is not None:
                steps.append(re.sub(r"\\(.)", r"\1", quoted))
            else:
                steps.append(int(index))
            pos = m.end()
        return cls(text, tuple(steps))

    def find(self, data):
        """The value at this path in `data`, or MISSING."""
        node = data
        for step in self.steps:
            if isinstance(step, str):
                if not isinstance(node, dict) or step not in node:
                    return MISSING
            elif not isinstance(node, list) or step >= len(node):
                return MISSING
            node = node[step]
        return node


# What `@name` in a group-by may name: a CloudEvents attribute (lowercase letters and
# digits, CloudEvents 1.0 "Attribute Naming Convention"), at most 64 characters.
ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,64}\Z")
NOT_ATTRIBUTES = ("data",)  # a member of the JSON format, not an attribute


@dataclass(frozen=True)
class AttributePath:
    """`@name` in a group-by: an attribute of the event (an extension such as `region`),
    read from the event itself rather than from its `data`; in binary content mode it
    is the Pub/Sub attribute `ce-name`."""

    text: str
    name: str
    steps: tuple = ()  # no path into data (the fast path leaves these to the validator)

    @classmethod
    def parse(cls, text: str) -> "AttributePath":
        name = text[1:]
        if not ATTRIBUTE_NAME.match(name) or name in NOT_ATTRIBUTES:
            raise ValueError(f"{text!r}: an attribute is @ and 1 to 64 lowercase letters and "
                             "digits (a CloudEvents attribute name), and not @data")
        return cls(text, name)

    def find(self, event):
        """The attribute's value in the event object, or MISSING."""
        return event.get(self.name, MISSING) if isinstance(event, dict) else MISSING


def parse_dimension_path(text) -> JsonPath | AttributePath:
    """A group-by source: `$.a.b` reads `data`, `@name` an attribute of the event."""
    if isinstance(text, str) and text.startswith("@"):
        return AttributePath.parse(text)
    return JsonPath.parse(text)


@dataclass(frozen=True)
class Meter:
    key: str
    event_type: str
    aggregation: Aggregation  # given as text, kept as the member it names
    value_property: JsonPath | None = None
    group_by: tuple[tuple[str, JsonPath | AttributePath], ...] = ()
    unit: str = ""
    description: str = ""
    precision: str = "NUMERIC"
    allow_negative: bool = False

    def __post_init__(self):
        object.__setattr__(self, "aggregation", Aggregation(self.aggregation))

    @property
    def numeric(self) -> bool:
        """Whether the meter's values are numbers (COUNT and UNIQUE_COUNT read none)."""
        return self.aggregation.numeric

    def read_value(self, data):
        """The reading this meter takes from an event's `data`.

        Numeric meters return a checked Decimal, UNIQUE_COUNT the value's
        canonical text (so 7 and "7" are one user), COUNT None. Raises
        ValueProblem when the value is missing or invalid.
        """
        if self.aggregation == Aggregation.COUNT:
            return None
        if not isinstance(data, dict):
            raise ValueProblem("VALUE_MISSING",
                               f"meter {self.key}: event has no data object to read "
                               f"{self.value_property.text} from")
        value = self.value_property.find(data)
        try:
            if value is MISSING:
                raise ValueProblem("VALUE_MISSING", f"{self.value_property.text} is missing")
            if self.numeric:
                return parse_decimal(value, precision=self.precision,
                                     allow_negative=self.allow_negative)
            return _scalar_text(value, "VALUE_TOO_LONG", "value")
        except ValueProblem as problem:
            raise ValueProblem(problem.code, f"meter {self.key}: {problem}") from None

    def read_dimensions(self, data, event: dict | None = None) -> dict:
        """Group-by values as text (missing -> None), from `data` or, for an `@name`
        path, from the event object. Raises ValueProblem for objects/arrays."""
        dims = {}
        for name, path in self.group_by:
            if isinstance(path, AttributePath):
                value = path.find(event)
            else:
                value = path.find(data) if isinstance(data, dict) else MISSING
            if value is MISSING or value is None:
                dims[name] = None
            elif isinstance(value, (dict, list)):
                raise ValueProblem("DIMENSION_NOT_SCALAR",
                                   f"meter {self.key}: dimension {name} ({path.text}) is a JSON "
                                   "object or array")
            else:
                try:
                    dims[name] = _scalar_text(value, "DIMENSION_TOO_LONG", f"dimension {name}")
                except ValueProblem as problem:
                    raise ValueProblem(problem.code, f"meter {self.key}: {problem}") from None
        return dims


def _scalar_text(value, too_long: str, what: str) -> str:
    """Canonical text of a JSON scalar (7, 7.0 and "7" alike), at most MAX_TEXT_LENGTH
    characters, else ValueProblem(too_long); a huge number is never written out to see."""
    if value is None:
        raise ValueProblem("VALUE_MISSING", "value is null")
    if isinstance(value, (dict, list)):
        raise ValueProblem("VALUE_NOT_SCALAR", "value is a JSON object or array")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        value = Decimal(value)
    if isinstance(value, UnrepresentableNumber):  # an exponent no Decimal holds
        mantissa = Decimal(re.split("[eE]", value.text)[0])
        if not mantissa.is_zero():
            raise ValueProblem(too_long, f"{what} is a number of more than {MAX_TEXT_LENGTH} "
                               "digits")
        value = mantissa  # zero, however its exponent is spelled
    if isinstance(value, Decimal) and value.is_finite():
        if plain_length(value) > MAX_TEXT_LENGTH:
            raise ValueProblem(too_long, f"{what} is a number of more than {MAX_TEXT_LENGTH} "
                               "digits")
        return format_decimal(value)
    text = str(value)
    if len(text) > MAX_TEXT_LENGTH:
        raise ValueProblem(too_long, f"{what} is longer than {MAX_TEXT_LENGTH} characters")
    return text


@dataclass(frozen=True)
class MeterCatalog:
    meters: tuple[Meter, ...]
    by_type: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        by_type: dict[str, list[Meter]] = {}
        for meter in self.meters:
            by_type.setdefault(meter.event_type, []).append(meter)
        self.by_type.update({t: tuple(ms) for t, ms in by_type.items()})

    @cached_property
    def reads_attributes(self) -> bool:
        """Whether a meter groups by an `@attribute` (its numbers must then parse exactly)."""
        return any(isinstance(path, AttributePath)
                   for meter in self.meters for _, path in meter.group_by)

    def meters_for(self, event_type: str) -> tuple[Meter, ...]:
        return self.by_type.get(event_type, ())

    def meter(self, key: str) -> Meter:
        for meter in self.meters:
            if meter.key == key:
                return meter
        raise KeyError(f"unknown meter {key!r}")


def load_catalog(path: str) -> MeterCatalog:
    """Reads and validates a catalog YAML file."""
    with open(path, encoding="utf-8") as f:
        return parse_catalog_text(f.read(), path)


def parse_catalog_text(text: str, name: str = "catalog") -> MeterCatalog:
    """Validates catalog YAML text; errors start with `name` (usually the file)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CatalogError(f"{name}: not valid YAML: {e}") from None
    try:
        return parse_catalog(document)
    except CatalogError as e:
        raise CatalogError(f"{name}: {e}") from None


def parse_catalog(document) -> MeterCatalog:
    if not isinstance(document, dict) or not isinstance(document.get("meters"), list):
        raise CatalogError("the catalog must be a mapping with a list under 'meters'")
    if not document["meters"]:
        raise CatalogError("meters: the catalog defines no meter")
    unknown = set(document) - {"meters"}
    if unknown:
        raise CatalogError(f"unknown top-level field(s): {', '.join(sorted(unknown))}")
    meters, seen = [], set()
    for index, spec in enumerate(document["meters"]):
        meter = _parse_meter(index, spec)
        if meter.key in seen:
            raise CatalogError(f"meters[{index}] ({meter.key}).key: duplicate meter key")
        seen.add(meter.key)
        meters.append(meter)
    return MeterCatalog(tuple(meters))


def _parse_meter(index: int, spec) -> Meter:
    where = f"meters[{index}]"
    if not isinstance(spec, dict):
        raise CatalogError(f"{where}: must be a mapping")
    key = spec.get("key")
    if isinstance(key, str) and key:
        where = f"{where} ({key})"

    def fail(field_name: str, problem: str):
        raise CatalogError(f"{where}.{field_name}: {problem}")

    for name in sorted(set(spec) - _MEMBERS):
        fail(name, "unknown field")
    if not isinstance(key, str) or not _KEY.match(key):
        fail("key", "required; lowercase letters, digits and _, starting with a letter, "
                    "at most 64 characters")
    event_type = spec.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        fail("event_type", "required; the CloudEvents type the meter reads")
    aggregation = spec.get("aggregation")
    if aggregation not in AGGREGATIONS:
        fail("aggregation", f"must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    value_property = None
    if aggregation == Aggregation.COUNT:
        if spec.get("value_property") is not None:
            fail("value_property", "COUNT counts events and reads no value; remove it")
    else:
        if spec.get("value_property") is None:
            fail("value_property", f"required for {aggregation}")
        try:
            value_property = JsonPath.parse(spec["value_property"])
        except ValueError as e:
            fail("value_property", str(e))
    group_by = spec.get("group_by") or {}
    if not isinstance(group_by, dict):
        fail("group_by", "must be a mapping of dimension name to JSONPath")
    dimensions = []
    for name, path in group_by.items():
        if not isinstance(name, str) or not _DIMENSION.match(name):
            fail(f"group_by.{name}", "dimension names are identifiers ([A-Za-z_][A-Za-z0-9_]*)")
        try:
            dimensions.append((name, parse_dimension_path(path)))
        except ValueError as e:
            fail(f"group_by.{name}", str(e))
    precision = spec.get("precision", "NUMERIC")
    if precision not in PRECISIONS:
        fail("precision", f"must be NUMERIC or BIGNUMERIC, got {precision!r}")
    allow_negative = spec.get("allow_negative", False)
    if not isinstance(allow_negative, bool):
        fail("allow_negative", "must be true or false")
    for text_field in ("unit", "description"):
        if not isinstance(spec.get(text_field, ""), str):
            fail(text_field, "must be a string")
    return Meter(key=key, event_type=event_type, aggregation=aggregation,
                 value_property=value_property, group_by=tuple(sorted(dimensions)),
                 unit=spec.get("unit", ""), description=spec.get("description", ""),
                 precision=precision, allow_negative=allow_negative)
