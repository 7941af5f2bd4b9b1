"""Usage events (SPEC §1): CloudEvents 1.0 in JSON, validated whole.

`parse_payload` turns one input payload (a file line or a Pub/Sub message, in
structured or binary content mode: docs/cloudevents.md) into accepted events
and rejections; nothing it is given disappears. An event
is accepted or rejected whole: every meter that reads it must find a valid
value, else it is rejected once with every problem listed, so a producer can
re-send a corrected event under the same identity.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, replace
from typing import NamedTuple

from schemas.catalog import ATTRIBUTE_NAME, NOT_ATTRIBUTES, MeterCatalog
from schemas.encoding import CONTENT_ENCODING, DEFAULT_MAX_DECOMPRESSED_BYTES, decode_content
from schemas.values import (NS, UNSAFE_CHARACTERS, ValueProblem, clip, dumps_exact, loads_exact,
                            parse_rfc3339)

SPECVERSION = "1.0"
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type", "subject", "time")
IDENTIFIER_ATTRIBUTES = ("id", "source", "type", "subject")
DEFAULT_MAX_IDENTIFIER_LENGTH = 256
DEFAULT_MAX_FUTURE_SKEW_NS = 5 * 60 * NS
# Arrays and objects nested in one payload, a batch's array included. Real events
# are a few levels deep; the bound keeps every re-serialiser and BigQuery's JSON
# (500 levels) far from their limits.
MAX_DEPTH = 64

# Stable error codes, in the order a rejection names its first problem.
ERROR_CODES = (
    "UNEXPECTED_ERROR",        # judging the payload failed: a bug, the payload is kept whole
    "UNSUPPORTED_CONTENT_ENCODING",  # a content-encoding attribute other than gzip or zstd
    "CORRUPT_COMPRESSION",     # the data is not (wholly) what its content-encoding says
    "DECOMPRESSED_TOO_LARGE",  # it decompresses to more than max_decompressed_bytes
    "MALFORMED_JSON",          # not JSON, or an empty line
    "INVALID_UNICODE",         # not UTF-8, or a string with a lone surrogate escape ("\ud800")
    "TOO_DEEP",                # arrays and objects nested deeper than MAX_DEPTH
    "EMPTY_BATCH",             # a CloudEvents batch (JSON array) with no event
    "NOT_AN_OBJECT",           # the payload or a batch element is not a JSON object
    "MISSING_ATTRIBUTE",       # a required attribute is absent or null
    "INVALID_ATTRIBUTE",       # not a string, or longer than the identifier limit
    "INVALID_CHARACTER",       # an identifier holds a control or bidi formatting character
    "EMPTY_ATTRIBUTE",         # a required attribute is "", or an identifier only whitespace
    "UNSUPPORTED_SPECVERSION",
    "BAD_TIME",                # not RFC 3339 with an offset, or outside years 1..9999
    "FUTURE_TIME",             # further ahead of processing time than max_future_skew
    "UNSUPPORTED_CONTENT_TYPE",  # datacontenttype (or the message's format) is not JSON
    "INVALID_DATA_BASE64",     # data_base64 not base64 text, or given with data as well
    "VALUE_MISSING",
    "VALUE_NOT_SCALAR",
    "VALUE_NOT_NUMERIC",
    "VALUE_NOT_FINITE",
    "VALUE_NEGATIVE",
    "VALUE_OUT_OF_RANGE",
    "VALUE_TOO_LONG",          # a UNIQUE_COUNT value longer than MAX_TEXT_LENGTH as text
    "DIMENSION_NOT_SCALAR",
    "DIMENSION_TOO_LONG",      # a group-by value longer than MAX_TEXT_LENGTH as text
)


# Events and their parts are NamedTuples, not frozen dataclasses: immutable all the
# same, and several times cheaper to create, which matters once per event.

class Reading(NamedTuple):
    """What one meter takes from one event: value is Decimal, text (UNIQUE_COUNT) or None."""

    meter: str
    dimensions: str  # canonical JSON object, sorted keys
    value: object


class UsageEvent(NamedTuple):
    source: str
    id: str
    type: str
    subject: str
    time_ns: int
    raw: str           # the event as received (batch elements re-serialised exactly)
    position: str      # where it came from: message id, or file:line[#element]
    order: tuple       # sort key of the position; the smallest copy of an identity wins
    readings: tuple[Reading, ...]
    ingest_ns: int = 0  # when the pipeline received it (processing time)

    @property
    def identity(self) -> tuple[str, str]:
        return (self.source, self.id)


class Payload(NamedTuple):
    """One input payload on its way to `parse_payload`: a file line, a Pub/Sub message
    or a stored event. Every source builds one of these; the parsers read its fields."""

    position: str                   # message id, or file:line
    order: tuple                    # sort key of the position (see UsageEvent.order)
    data: bytes                     # the line, or the message data
    ingest_ns: int | None = None    # when received; None: the limits' now_ns
    attributes: dict | None = None  # Pub/Sub attributes (binary content mode reads ce-*)

    def parse(self, catalog: MeterCatalog, limits: Limits) -> list[UsageEvent | Rejection]:
        return parse_payload(self.data, self.position, self.order, catalog, limits,
                             self.ingest_ns, self.attributes)


class Rejection(NamedTuple):
    error_code: str
    error_message: str
    payload: str
    position: str
    event_source: str | None = None
    event_id: str | None = None
    attributes: dict | None = None  # Pub/Sub attributes of the message
    ingest_ns: int = 0
    # The payload's bytes when `payload` is not them verbatim (not UTF-8: `payload`
    # then shows each undecodable byte as U+FFFD, so it can be stored as text).
    payload_bytes: bytes | None = None


@dataclass(frozen=True)
class Limits:
    """Validation limits. `now_ns` is the processing time FUTURE_TIME is judged against;
    None (streaming) means each payload's own ingest time."""

    now_ns: int | None
    max_future_skew_ns: int = DEFAULT_MAX_FUTURE_SKEW_NS
    max_identifier_length: int = DEFAULT_MAX_IDENTIFIER_LENGTH
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES


def stored_ingest_ns(ingest_us: int) -> int:
    """The ingest time an `events` row's event is judged against again: the row keeps it
    cut to the microsecond, and its last nanosecond is never before the instant the
    event was accepted at, so one accepted just within max_future_skew is not
    FUTURE_TIME when re-read."""
    return ingest_us * 1000 + 999


def parse_payload(payload: bytes, position: str, order: tuple, catalog: MeterCatalog,
                  limits: Limits, ingest_ns: int | None = None,
                  attributes: dict | None = None) -> list[UsageEvent | Rejection]:
    """One payload -> its events and rejections (a JSON array is a CloudEvents batch).

    Total: should judging a payload ever fail (a bug, not the payload's fault), the
    payload is dead-lettered whole as UNEXPECTED_ERROR with the error, never raised,
    so one message cannot stall a stream that would retry it forever."""
    context = _Context(catalog, limits, limits.now_ns if ingest_ns is None else ingest_ns,
                       attributes)
    text = _text(payload)
    try:
        data, problem = decode_content(payload, attributes, limits.max_decompressed_bytes)
        if problem:  # kept as received: its compressed bytes and its attributes
            return [_whole(context, problem, payload, text, position)]
        if data is not payload:  # what is judged and kept from here on is the decompressed data
            context = replace(context, attributes=_without_encoding(attributes))
            payload, text = data, _text(data)
        return _parse(payload, text, position, order, context)
    except Exception as e:  # the safety net itself
        return [_whole(context, ("UNEXPECTED_ERROR", f"tallyflow could not judge this payload "
                                 f"({type(e).__name__}: {clip(str(e))}); please report it"),
                       payload, text, position)]


def _without_encoding(attributes: dict) -> dict:
    """The attributes of a decompressed payload: a rejection keeps the payload
    decompressed, so a re-sent copy must not claim to be compressed."""
    return {key: value for key, value in attributes.items()
            if not (isinstance(key, str) and key.lower() == CONTENT_ENCODING)}


def _parse(payload: bytes, text: str, position: str, order: tuple,
           context: _Context) -> list[UsageEvent | Rejection]:
    mode = content_mode(context.attributes)
    if mode == BINARY:
        return [_binary_event(payload, text, position, order, context)]
    if mode == UNSUPPORTED:  # the content-type attribute, however its name is spelled
        content_type = _by_name(context.attributes)["content-type"]
        return [_whole(context, ("UNSUPPORTED_CONTENT_TYPE", f"content-type "
                                 f"{clip(content_type)!r} is not a JSON event format "
                                 "(application/cloudevents+json)"), payload, text, position)]
    if not payload.strip():
        return [context.reject("MALFORMED_JSON", "empty payload", text, position)]
    document, problem = decode_json(
        payload, None if context.catalog.reads_attributes else "data")
    if problem:
        return [_whole(context, problem, payload, text, position)]
    if isinstance(document, list):
        if not document:
            return [context.reject("EMPTY_BATCH", "CloudEvents batch contains no event", text,
                                   position)]
        return [context.event(element, f"{position}#{i}", order + (i,))
                for i, element in enumerate(document)]
    return [context.event(document, position, order, raw=text.strip())]


def decode_json(payload: bytes, numbers_under: str | None = None, within: int = 0):
    """(document, None), or (None, (code, message)) when `payload` is not JSON text
    within the limits: MALFORMED_JSON, INVALID_UNICODE or TOO_DEEP. `within`: the
    levels the document will sit in (1 for an event's data, which its event's object
    wraps in `raw`), so the whole stays within MAX_DEPTH."""
    try:
        document = loads_exact(payload, numbers_under=numbers_under)
        return document, _payload_problem(payload, document, MAX_DEPTH - within)
    except UnicodeDecodeError as e:
        return None, ("INVALID_UNICODE", f"not UTF-8: {e}")
    except RecursionError:
        return None, ("TOO_DEEP", f"nested too deep to parse (the limit is {MAX_DEPTH} levels)")
    except ValueError as e:
        return None, ("MALFORMED_JSON", f"not valid JSON: {e}")


def _whole(context: _Context, problem: tuple[str, str], payload: bytes, text: str,
           position: str) -> Rejection:
    """The payload rejected whole."""
    return _as_received(context.reject(*problem, text, position), payload, text)


def _as_received(rejection: Rejection, payload: bytes, text: str) -> Rejection:
    """`rejection` holding the payload as received: its text, and its bytes too when
    `text` is not them verbatim."""
    verbatim = None if text.encode("utf-8", "surrogatepass") == payload else bytes(payload)
    return rejection._replace(payload=text, payload_bytes=verbatim)


# ------------------------------------------------- content modes (Pub/Sub binding)

STRUCTURED, BINARY, UNSUPPORTED = "structured", "binary", "unsupported"
CE_PREFIX = "ce-"
# Pub/Sub's limit on an attribute value. A longer binary-mode attribute is refused,
# checked again because the emulator and other sources do not enforce it.
ATTRIBUTE_VALUE_BYTES = 1024


def content_mode(attributes: dict | None) -> str:
    """How a Pub/Sub message carries its event (CloudEvents Pub/Sub protocol binding).

    A `content-type` of `application/cloudevents+json` (or `-batch+json`) is
    structured mode, another `application/cloudevents…` format UNSUPPORTED; otherwise a
    `ce-specversion` attribute means binary mode (what the SDKs test), and anything
    else is structured mode, as every message was before binary mode was read: a
    structured publisher may set `ce-time` (the watermark attribute) or other `ce-`
    attributes for subscription filters without changing what its data means."""
    if not attributes:
        return STRUCTURED
    names = _by_name(attributes)
    content_type = names.get("content-type")
    if isinstance(content_type, str) and _media_type(content_type).startswith(
            "application/cloudevents"):
        return STRUCTURED if is_json_content_type(content_type) else UNSUPPORTED
    return BINARY if CE_PREFIX + "specversion" in names else STRUCTURED


def _by_name(attributes: dict) -> dict:
    """The attributes by lowercase name: the binding's names are case-insensitive."""
    return {key.lower(): value for key, value in attributes.items() if isinstance(key, str)}


def is_json_content_type(content_type) -> bool:
    """Whether a (data)contenttype is JSON: application/json, text/json or any `+json`
    media type, with no charset but UTF-8 (CloudEvents JSON format 1.0, §3.1)."""
    if not isinstance(content_type, str):
        return False
    media = _media_type(content_type)
    if not (media in ("application/json", "text/json")
            or (media.endswith("+json") and "/" in media)):
        return False
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
                "utf-8", "utf8"):
            return False
    return True


def _media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def _binary_event(payload: bytes, text: str, position: str, order: tuple,
                  context: _Context) -> UsageEvent | Rejection:
    """A binary-mode message -> its event, judged as the equivalent structured one.

    The `ce-` attributes are the event's attributes, `content-type` its
    datacontenttype and the message data its `data`. The event's `raw` is that
    structured event (attributes, then `"data":` and the data's text verbatim), so
    the recompute and explain re-read it exactly; a rejection keeps the message
    as received (data as payload, attributes alongside), ready to be re-sent."""
    problems: list[tuple[str, str]] = []
    obj = _binary_attributes(context.attributes, problems)
    data_text = None
    if payload and is_json_content_type(obj.get("datacontenttype", "application/json")):
        document, problem = decode_json(payload, within=1)
        if problem:  # as a structured event's unreadable data: meters then say nothing more
            problems.append((problem[0], f"data: {problem[1]}"))
            obj["data"] = _UNREADABLE  # never in raw (_structured_text leaves data out)
        else:
            obj["data"], data_text = document, text.strip(" \t\r\n")  # JSON whitespace
    raw = _structured_text(obj, data_text)
    result = parse_event(obj, position, order, context, raw, problems)
    return _as_received(result, payload, text) if isinstance(result, Rejection) else result


def _binary_attributes(attributes: dict, problems: list) -> dict:
    """The event's attributes from the `ce-` Pub/Sub attributes and `content-type`
    (its datacontenttype): required ones first, in their order, then the others by
    name. Other attributes are transport metadata (content-encoding, a publisher's
    own), not part of the event."""
    found = {}
    for key, value in attributes.items():
        if not isinstance(key, str):
            continue
        lowered = key.lower()  # the binding's attribute names are case-insensitive
        if lowered == "content-type":
            name = "datacontenttype"
        elif lowered.startswith(CE_PREFIX):
            name = lowered[len(CE_PREFIX):]
            if not ATTRIBUTE_NAME.match(name) or name in NOT_ATTRIBUTES:
                problems.append(("INVALID_ATTRIBUTE", f"Pub/Sub attribute {clip(key)!r} is not "
                                 "a CloudEvents attribute (ce- and 1 to 64 letters and digits, "
                                 "not ce-data)"))
                continue
        else:
            continue
        if name in found and found[name] != value:
            problems.append(("INVALID_ATTRIBUTE", f"attribute {name} is given twice, with "
                             "different values (names are case-insensitive; content-type is "
                             "datacontenttype)"))
            continue
        if isinstance(value, str) and _LONE_SURROGATE.search(value):
            problems.append(("INVALID_UNICODE", f"attribute {name} holds a lone UTF-16 "
                             "surrogate, which is not Unicode text"))
            continue  # kept out of raw, which must encode as UTF-8
        if (isinstance(value, str) and name not in IDENTIFIER_ATTRIBUTES  # bounded on their own
                and len(value.encode("utf-8")) > ATTRIBUTE_VALUE_BYTES):
            problems.append(("INVALID_ATTRIBUTE", f"attribute {name} is longer than "
                             f"{ATTRIBUTE_VALUE_BYTES} bytes (Pub/Sub's limit)"))
        found[name] = value
    first = [name for name in REQUIRED_ATTRIBUTES if name in found]
    rest = sorted(name for name in found if name not in REQUIRED_ATTRIBUTES)
    return {name: found[name] for name in first + rest}


def _structured_text(attributes: dict, data_text: str | None) -> str:
    """The structured JSON of an event: its attributes, then its data's text verbatim."""
    head = dumps_exact({name: value for name, value in attributes.items() if name != "data"})
    if data_text is None:
        return head
    return f'{head[:-1]}{"," if len(head) > 2 else ""}"data":{data_text}}}'


def nesting_may_exceed(payload: bytes, limit: int = MAX_DEPTH) -> bool:
    """A cheap screen: a payload with at most `limit` brackets cannot nest deeper."""
    return payload.count(b"[") + payload.count(b"{") > limit


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _payload_problem(payload: bytes, document, limit: int) -> tuple[str, str] | None:
    """TOO_DEEP (nested deeper than `limit`) or INVALID_UNICODE, each walked for only
    when a cheap screen of the bytes says it may be (orjson, the usual parser, refuses
    lone surrogates itself)."""
    if nesting_may_exceed(payload, limit) and _depth(document) > limit:
        return "TOO_DEEP", (f"arrays and objects are nested more than {limit} levels deep"
                            + ("" if limit == MAX_DEPTH else
                               f" ({MAX_DEPTH} with the event around them)"))
    if _SURROGATE_ESCAPE.search(payload) and _holds_lone_surrogate(document):
        return ("INVALID_UNICODE", "a string holds a lone UTF-16 surrogate escape "
                "(\\ud800-\\udfff without its pair), which is not Unicode text")
    return None


def _depth(document) -> int:
    deepest, pending = 0, [(document, 1)]
    while pending:
        node, depth = pending.pop()
        children = node.values() if type(node) is dict else node if type(node) is list else None
        if children is not None:
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _holds_lone_surrogate(document) -> bool:
    pending = [document]
    while pending:
        node = pending.pop()
        if type(node) is dict:
            pending.extend(node)
            pending.extend(node.values())
        elif type(node) is list:
            pending.extend(node)
        elif type(node) is str and _LONE_SURROGATE.search(node):
            return True
    return False


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class _Context:
    """What every event of one payload shares."""

    catalog: MeterCatalog
    limits: Limits
    ingest_ns: int
    attributes: dict | None

    def reject(self, code, message, payload, position, source=None, event_id=None):
        return Rejection(code, message, payload, position, source, event_id, self.attributes,
                         self.ingest_ns)

    def event(self, obj, position, order, raw=None):
        return parse_event(obj, position, order, self, raw)


def parse_event(obj, position: str, order: tuple, context: _Context,
                raw: str | None = None, problems: list | None = None) -> UsageEvent | Rejection:
    """One decoded JSON value -> an accepted event or a rejection listing every problem.

    `raw` is the event's text as received when it had a payload of its own;
    `problems` are those already found (in a binary-mode message's attributes).
    """
    raw = dumps_exact(obj) if raw is None else raw
    if not isinstance(obj, dict):
        return context.reject("NOT_AN_OBJECT", f"event is a JSON {_kind(obj)}, not an object",
                              raw, position)
    limits = context.limits
    problems = [] if problems is None else problems
    for name in REQUIRED_ATTRIBUTES:
        value = obj.get(name)
        if value is None:
            problems.append(("MISSING_ATTRIBUTE", f"required attribute {name} is missing"))
        elif not isinstance(value, str):
            problems.append(("INVALID_ATTRIBUTE",
                             f"attribute {name} must be a string, got {_kind(value)}"))
        elif not value:
            problems.append(("EMPTY_ATTRIBUTE", f"attribute {name} is empty"))
        elif name in IDENTIFIER_ATTRIBUTES:
            problem = _identifier_problem(name, value, limits.max_identifier_length)
            if problem:
                problems.append(problem)
    specversion = obj.get("specversion")
    if isinstance(specversion, str) and specversion and specversion != SPECVERSION:
        problems.append(("UNSUPPORTED_SPECVERSION", f"specversion {clip(specversion)!r} is "
                         f"not supported (only {SPECVERSION})"))
    time_ns = None
    if isinstance(obj.get("time"), str) and obj["time"]:
        try:
            time_ns = parse_rfc3339(obj["time"])
        except ValueError as e:
            problems.append(("BAD_TIME", str(e)))
        else:
            if time_ns > context.ingest_ns + limits.max_future_skew_ns:
                problems.append(("FUTURE_TIME", f"time {clip(obj['time'])} is more than "
                                 f"{limits.max_future_skew_ns // NS} s ahead of "
                                 "processing time"))
    data = _event_data(obj, problems)
    readings = () if data is _UNREADABLE else _readings(obj, data, context.catalog, problems)
    source, event_id = _text_or_none(obj.get("source")), _text_or_none(obj.get("id"))
    if problems:
        code = min(problems, key=lambda p: ERROR_CODES.index(p[0]))[0]
        return context.reject(code, "; ".join(message for _, message in problems), raw,
                              position, source, event_id)
    return UsageEvent(source=source, id=event_id, type=obj["type"], subject=obj["subject"],
                      time_ns=time_ns, raw=raw, position=position, order=order,
                      readings=readings, ingest_ns=context.ingest_ns)


def _identifier_problem(name: str, value: str, max_length: int) -> tuple[str, str] | None:
    """What id, source, type and subject may hold (README "Identifiers"): any Unicode
    text of 1..max_length characters except control and bidi formatting characters,
    and not only whitespace. Compared exactly, as received (no trimming, no folding)."""
    if len(value) > max_length:
        return "INVALID_ATTRIBUTE", f"attribute {name} is longer than {max_length} characters"
    if value.isprintable() and value[0] != " ":  # the common case, checked in C
        return None
    unsafe = UNSAFE_CHARACTERS.search(value)
    if unsafe:
        return ("INVALID_CHARACTER", f"attribute {name} holds the control or formatting "
                f"character U+{ord(unsafe.group()):04X} at {unsafe.start()}")
    if value.isspace():
        return "EMPTY_ATTRIBUTE", f"attribute {name} is only whitespace"
    return None


_UNREADABLE = object()


def _event_data(obj: dict, problems: list):
    """What meters read: `data`, or `data_base64` decoded (CloudEvents JSON format §3.1);
    _UNREADABLE, with a problem, when the event's data is not JSON (meters then have
    nothing to read, and say nothing more)."""
    content_type = obj.get("datacontenttype")
    if content_type is not None:
        if not isinstance(content_type, str):
            problems.append(("INVALID_ATTRIBUTE", "attribute datacontenttype must be a "
                             f"string, got {_kind(content_type)}"))
            return _UNREADABLE
        if not is_json_content_type(content_type):
            problems.append(("UNSUPPORTED_CONTENT_TYPE", f"datacontenttype "
                             f"{clip(content_type)!r} is not JSON: tallyflow meters JSON data "
                             "only (application/json, or a +json type)"))
            return _UNREADABLE
    encoded = obj.get("data_base64")
    if encoded is None:
        return obj.get("data")
    if obj.get("data") is not None:
        problems.append(("INVALID_DATA_BASE64", "the event holds both data and data_base64"))
        return _UNREADABLE
    try:
        if not isinstance(encoded, str):
            raise ValueError(f"a JSON {_kind(encoded)}, not a string")
        decoded = base64.b64decode(encoded, validate=True)
    except ValueError as e:  # binascii.Error included
        problems.append(("INVALID_DATA_BASE64", f"data_base64 is not base64: {clip(str(e))}"))
        return _UNREADABLE
    if not decoded:
        return None
    document, problem = decode_json(decoded, within=1)
    if problem:
        problems.append((problem[0], f"data_base64: {problem[1]}"))
        return _UNREADABLE
    return document


def _readings(obj: dict, data, catalog: MeterCatalog, problems: list) -> tuple[Reading, ...]:
    event_type = obj.get("type")
    if not isinstance(event_type, str):
        return ()
    readings = []
    for meter in catalog.meters_for(event_type):
        try:
            value = meter.read_value(data)
            dimensions = dimensions_json(meter.read_dimensions(data, obj))
        except ValueProblem as problem:
            problems.append((problem.code, str(problem)))
            continue
        readings.append(Reading(meter.key, dimensions, value))
    return tuple(readings)


_DIMENSIONS_CACHE: dict[tuple, str] = {}


def dimensions_json(dimensions: dict) -> str:
    """Canonical JSON of group-by values; memoised, as few distinct combinations recur."""
    key = tuple(dimensions.items())
    text = _DIMENSIONS_CACHE.get(key)
    if text is None:
        text = dumps_exact(dimensions, sort_keys=True)
        if len(_DIMENSIONS_CACHE) < 100_000:
            _DIMENSIONS_CACHE[key] = text
    return text


def _text(payload: bytes) -> str:
    return payload.decode("utf-8", errors="replace")


def _text_or_none(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "number"
