"""Hostile payloads, and the check that each one ends in exactly one outcome that can be stored.

Strategies (hypothesis) for arbitrary bytes, JSON written by hand so it can say
what Python's encoder would not (lone surrogate escapes, numbers spelled
verbatim: 1E999999999, 0E-1000, a thousand trailing zeros, 5,000-digit
integers), adversarial strings (controls, bidi overrides, surrogates,
whitespace), deep nesting, and mutations of valid events (a field replaced, a
value re-spelled, bytes flipped, cut or inserted, events put in a batch).

`binary_messages` are hostile messages in CloudEvents binary content mode (data
and Pub/Sub attributes), `compressed_messages` either kind compressed (gzip,
zstd), mangled or mislabelled at times. `check_payload` runs one payload through every pure step
of both modes (streaming and batch), from parsing to every row and message it can
become, encoding each the way its sink would (strict UTF-8 JSON, Beam's coder),
and returns its outcomes; `check_compute_usage` and `check_stream_usage` run many
through the pipelines.
Used by tests/test_fuzz.py (seeded, short) and benchmarks/fuzz.py (minutes).
"""
from __future__ import annotations

import base64
import json
from collections import Counter

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import GlobalWindows
from hypothesis import strategies as st

from schemas import aggregation
from schemas.catalog import parse_catalog
from schemas.encoding import compress
from schemas.events import ERROR_CODES, Limits, Payload, Rejection, UsageEvent, parse_payload
from schemas.metering import usage_row, value_text as _text
from schemas.values import format_decimal, parse_rfc3339
from tests.conftest import ALL_AGGREGATIONS
from tests.test_fastpath import agree
from transforms.aggregate import event_timestamp
from transforms.batch_usage import ComputeUsage
from transforms.dedup import Duplicate, metering_signature
from transforms.outcomes import dead_letter_line
from transforms.pubsub import dead_letter_message
from transforms.rows import (UnwritableRow, dead_letter_row, duplicate_row, event_row,
                            failed_write_rows, late_event_row, payload_bytes, usage_pane_row)
from transforms.streaming import StreamUsage

NS = 10 ** 9
NOW = parse_rfc3339("2026-11-21T00:00:00Z")
LIMITS = Limits(now_ns=NOW)
WINDOW_NS = 3600 * NS
CATALOG = parse_catalog({"meters": ALL_AGGREGATIONS["meters"] + [
    {"key": "big", "event_type": "ledger", "aggregation": "SUM", "value_property": "$.delta",
     "allow_negative": True, "precision": "BIGNUMERIC"},
    {"key": "depth", "event_type": "ledger", "aggregation": "MAX",
     "value_property": "$.level.value", "group_by": {"zone": "$.where[0]"}},
]})
OUTCOMES = ("accepted", "dead_lettered")


class Raw(str):
    """JSON text written verbatim."""


# ------------------------------------------------------------- strategies

NASTY_CHARACTERS = ["\ud800", "\udfff", "\udbff", "\x00", "\x1b", "\x1b[2J", "\x07", "\x7f",
                    "\x85", "\x9b", "\u202e", "\u2066", "\u061c", "\u200f", "\u2028", "\ufeff",
                    "\ufffd", "\uffff", " ", "\t", "\n", "\u3000", "\u00a0", "\u200d", "é",
                    "\U0001f600", "\\", '"', "\u0661", "\uff11"]
NASTY_NUMBERS = ["1E999999999", "-1E999999999", "1E-999999999", "0E-1000", "0E+999999999",
                 "1E99999999999999999999", "1E-99999999999999999999", "0E99999999999999999999",
                 "1." + "0" * 1200, "0." + "0" * 1200 + "1", "1" + "0" * 1200, "1" * 5000,
                 "-0", "-0.0", "1e400", "2.5E-7", "18446744073709551616",
                 "99999999999999999999999999999.999999999", "1E28", "1E29", "1E38", "1E39",
                 "0.0000000001", "NaN", "Infinity", "-Infinity", "12.50", "7"]

strings = st.one_of(
    st.text(max_size=12),
    st.lists(st.sampled_from(NASTY_CHARACTERS), min_size=1, max_size=4).map("".join),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=4), st.sampled_from(NASTY_CHARACTERS),
              st.text(max_size=4)),
    st.sampled_from(["x" * 257, "y" * 1025, "", "1.0", "call", "ledger"]),
)
numbers = st.one_of(
    st.sampled_from(NASTY_NUMBERS).map(Raw),
    st.integers().map(lambda n: Raw(str(n))),
    st.builds(lambda d, e: Raw(f"{d}E{e}"), st.integers(-10 ** 6, 10 ** 6),
              st.integers(-10 ** 20, 10 ** 20)),
    st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: Raw(str(d))),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings,
                    st.sampled_from(NASTY_NUMBERS))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(strings, inner, max_size=4)),
    max_leaves=12)


@st.composite
def deep(draw):
    """A scalar nested `depth` arrays or objects deep, around the limits that matter
    (the event limit, Python's recursion limit, orjson's 1024), spelled verbatim."""
    depth = draw(st.sampled_from([30, 62, 63, 64, 65, 200, 449, 450, 600, 1023, 1025, 3000]))
    opening, closing = draw(st.sampled_from([("[", "]"), ('{"k":', "}"), ('[{"k":', "}]")]))
    return Raw(opening * depth + spell(draw(scalars)) + closing * depth)


def spell(value, ascii_only: bool = True) -> str:
    """JSON text of `value`: Raw verbatim, strings escaped (surrogates as \\uXXXX)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{spell(k, ascii_only)}:{spell(v, ascii_only)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(spell(v, ascii_only) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only or _has_surrogate(value))
    return json.dumps(value)


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # spell() escapes surrogates; this never needs to


@st.composite
def valid_events(draw):
    """A valid event of either metered type, or an unmetered one."""
    kind = draw(st.sampled_from(["call", "ledger", "other"]))
    doc = {"specversion": "1.0", "id": f"e{draw(st.integers(0, 30))}",
           "source": draw(st.sampled_from(["//a", "//b"])), "type": kind,
           "subject": draw(st.sampled_from(["acme", "globex", "\u00e9t\u00e9"])),
           "time": draw(st.sampled_from(["2026-11-02T09:00:00Z", "2026-11-02T09:59:59.5+01:00",
                                         "2016-12-31T23:59:60Z", "0001-01-01T00:00:00Z",
                                         "9999-12-30T23:59:59.999999999Z"]))}
    if kind == "call":
        doc["data"] = {"region": draw(st.sampled_from(["eu", "us", None, 7, True])),
                       "amount": draw(st.sampled_from(["2.5", 3, Raw("1.50"), "0"])),
                       "user": draw(st.sampled_from(["u1", "u2", 7]))}
    elif kind == "ledger":
        doc["data"] = {"delta": draw(st.sampled_from(["-2.5", Raw("1E+3"), "0.5"])),
                       "level": {"value": draw(st.sampled_from([1, "2.25"]))},
                       "where": [draw(st.sampled_from(["x", "y"]))]}
    return doc


@st.composite
def mutated_events(draw):
    """A valid event with one part replaced by something hostile."""
    doc = draw(valid_events())
    where = draw(st.sampled_from(["attribute", "data", "dimension", "extra", "value",
                                  "dimension", "value"]))
    hostile = draw(st.one_of(scalars, json_values, deep()))
    if where == "attribute":
        doc[draw(st.sampled_from(["id", "source", "type", "subject", "time", "specversion"]))] = \
            hostile
    elif where == "extra":
        doc[draw(strings)] = hostile
    elif isinstance(doc.get("data"), dict):
        key = {"data": draw(strings), "dimension": "region",
               "value": draw(st.sampled_from(["amount", "user", "delta"]))}[where]
        doc["data"][key] = hostile
    else:
        doc["data"] = hostile
    return doc


def _byte_mutation(payload: bytes, draw) -> bytes:
    at = draw(st.integers(0, max(len(payload) - 1, 0)))
    how = draw(st.sampled_from(["flip", "cut", "insert"]))
    if how == "cut":
        return payload[:at]
    junk = draw(st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\x00", b"\\ud800",
                                 b"[", b"{", b'"', b"\x1b", b"\xe2\x80\xae"]))
    return payload[:at] + junk + payload[at + (how == "flip"):]


@st.composite
def payloads(draw) -> bytes:
    """One hostile payload, of any of the families above."""
    family = draw(st.sampled_from(["bytes", "json", "event", "batch", "mangled", "valid"]))
    if family == "bytes":
        return draw(st.binary(max_size=64))
    if family == "json":
        return _encode(spell(draw(st.one_of(json_values, deep()))))
    ascii_only = draw(st.booleans())
    if family == "batch":
        docs = draw(st.lists(st.one_of(valid_events(), mutated_events(), json_values),
                             max_size=4))
        return _encode(spell(docs, ascii_only))
    doc = draw(valid_events() if family == "valid" else mutated_events())
    payload = _encode(spell(doc, ascii_only))
    return _byte_mutation(payload, draw) if family == "mangled" else payload


CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "text/json",
                 "application/ld+json", "application/json; charset=latin-1", "text/plain",
                 "application/octet-stream", "application/cloudevents+json",
                 "application/cloudevents-batch+json", "application/cloudevents+avro", "", " ",
                 "\ud800", "application/json; x=\ud800", "application/json\x00", "+json"]
ATTRIBUTE_KEYS = ["ce-", "ce-data", "ce-data_base64", "ce-datacontenttype", "ce-Region",
                  "ce-region", "ce-" + "a" * 70, "ce-\ud800", "content-encoding", "ce-time",
                  "ce-specversion", "content-type"]
attribute_texts = st.one_of(strings, st.sampled_from(["\u00e9" * 600, "z" * 1024, "1.0"]))


@st.composite
def binary_messages(draw) -> tuple[bytes, dict]:
    """A hostile message in binary content mode, (data, Pub/Sub attributes): an event's
    attributes as ce-* (values spelled as text), its data as the message, then attributes
    dropped, replaced or added (names and values hostile, content types of every kind)
    and the data's bytes mangled."""
    doc = draw(st.one_of(valid_events(), mutated_events()))
    attributes = {f"ce-{name}": value if isinstance(value, str) else spell(value)
                  for name, value in doc.items() if name != "data"}
    data = _encode(spell(doc["data"])) if "data" in doc else b""
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["drop", "replace", "add", "content-type", "mangle"]))
        if how == "drop" and attributes:
            del attributes[draw(st.sampled_from(sorted(attributes)))]
        elif how == "replace" and attributes:
            attributes[draw(st.sampled_from(sorted(attributes)))] = draw(attribute_texts)
        elif how == "add":
            attributes[draw(st.one_of(strings, st.sampled_from(ATTRIBUTE_KEYS)))] = \
                draw(attribute_texts)
        elif how == "content-type":
            attributes["content-type"] = draw(st.sampled_from(CONTENT_TYPES))
        elif how == "mangle":
            data = _byte_mutation(data, draw)
    return data, attributes


ENCODING_NAMES = ["gzip", "zstd", "GZIP", " zstd ", "identity", "", "br", "\ud800"]


@st.composite
def compressed_messages(draw) -> tuple[bytes, dict]:
    """A message whose data is compressed (data, Pub/Sub attributes): a hostile structured
    payload or binary-mode message, compressed as gzip or zstd (several frames or
    members at times), marked by a content-encoding of any spelling, and at times the
    compressed bytes mangled (cut, flipped, junk inserted or appended)."""
    if draw(st.booleans()):
        data, attributes = draw(payloads()), {}
    else:
        data, attributes = draw(binary_messages())
    encoding = draw(st.sampled_from(["gzip", "zstd"]))
    packed = b"".join(compress(part, encoding) for part in _parts(data, draw))
    if draw(st.booleans()):
        packed = _byte_mutation(packed, draw)
    name = draw(st.sampled_from(["content-encoding", "Content-Encoding"]))
    label = draw(st.one_of(st.just(encoding), st.sampled_from(ENCODING_NAMES)))
    return packed, {**attributes, name: label}


def _parts(data: bytes, draw) -> list[bytes]:
    cut = draw(st.integers(0, len(data)))
    return [data] if draw(st.booleans()) else [data[:cut], data[cut:]]


# ----------------------------------------------------------------- checks


def stored(row: dict) -> None:
    """Asserts `row` can be sent as BigQuery row JSON (strict UTF-8) and crosses Beam's
    default coder unchanged."""
    orjson.dumps(row)
    json.dumps(row, ensure_ascii=False).encode("utf-8")
    shuffled(row)


def stored_payload(row: dict) -> bytes:
    """A dead letter row's payload as received: COALESCE(payload_bytes, payload), as
    docs/analysts.md tells a reader to take it."""
    if row["payload_bytes"] is not None:
        return base64.b64decode(row["payload_bytes"])
    return row["payload"].encode("utf-8")


def shuffled(element) -> None:
    """Asserts `element` crosses the shuffle coder Beam picks for its type unchanged
    (UsageEventCoder for events), exponents of Decimals included."""
    coder = beam.coders.registry.get_coder(type(element))
    assert repr(coder.decode(coder.encode(element))) == repr(element)


def check_rejection(rejection: Rejection) -> None:
    assert rejection.error_code in ERROR_CODES, rejection.error_code
    shuffled(rejection)
    row = dead_letter_row(rejection, "fuzz", "job")[1]
    stored(row)
    assert stored_payload(row) == payload_bytes(rejection)
    dead_letter_line(rejection).encode("utf-8")
    message = dead_letter_message(rejection)
    if rejection.payload_bytes is not None:
        assert message.data == rejection.payload_bytes
    for key, value in message.attributes.items():
        assert len(value.encode("utf-8")) <= 1024, key


def check_event(event: UsageEvent) -> None:
    """Every row an accepted event becomes, and its readings folded both ways."""
    shuffled(event)
    stored(event_row(event, "job")[1])
    stored(late_event_row(event, NS, WINDOW_NS, "job")[1])
    stored(duplicate_row(Duplicate(event.source, event.id, event.position, "p", True),
                         event.ingest_ns, "job")[1])
    hash(metering_signature(event))
    identity = aggregation.identity_hash(event.source, event.id)
    window = event.time_ns - event.time_ns % WINDOW_NS
    for reading in event.readings:
        kind = CATALOG.meter(reading.meter).aggregation
        streaming = aggregation.add_reading(aggregation.new_accumulator(kind), reading.value,
                                            event.time_ns, event.id, identity)
        streaming = aggregation.merge_accumulators([streaming, aggregation.add_reading(
            aggregation.new_accumulator(kind), reading.value, event.time_ns, event.id,
            identity)])
        batch = aggregation.accumulate(kind, [(_text(reading.value), event.time_ns, event.id,
                                               identity)] * 2)
        row = usage_row((event.subject, reading.meter, reading.dimensions), window,
                        window + WINDOW_NS, aggregation.extract(batch))
        stored(row)
        value = aggregation.extract(streaming)[0]
        assert format_decimal(value) == row["value"], (reading, row)
        pane = {**row, "pane_timing": "ON_TIME", "pane_index": 0, "is_final": True}
        stored_or_failed(lambda: usage_pane_row(pane, False, event.ingest_ns, "job"),
                         "usage_panes")


def stored_or_failed(build, table: str) -> None:
    """A row is stored, or (a value beyond its column) its `failed_writes` rows are,
    as `WriteRows` routes it."""
    try:
        stored(build()[1])
    except UnwritableRow as unwritable:
        assert unwritable.code and unwritable.reason
        for _, failed in failed_write_rows(table, unwritable.row_id, unwritable.row,
                                           unwritable.code, unwritable.reason, NOW):
            stored(failed)


def check_payload(payload: bytes, now_ns: int = NOW, attributes: dict | None = None
                  ) -> list[str]:
    """Runs every pure step on one payload received at `now_ns` (with `attributes`, a
    Pub/Sub message's); returns one outcome per record it holds. An accepted event's
    stored raw must re-read as the same event, as the recompute and explain read it."""
    attributes = {"k": "v"} if attributes is None else attributes
    results = parse_payload(payload, "fuzz:1", ("fuzz", 1), CATALOG, LIMITS, now_ns, attributes)
    assert results, payload
    agree(payload, CATALOG, Limits(now_ns=now_ns))
    outcomes = []
    for result in results:
        if isinstance(result, Rejection):
            check_rejection(result)
            outcomes.append("dead_lettered")
        else:
            check_event(result)
            [stored_again] = parse_payload(result.raw.encode("utf-8"), result.position,
                                           result.order, CATALOG, LIMITS, now_ns)
            assert isinstance(stored_again, UsageEvent), (result, stored_again)
            assert stored_again._replace(raw=result.raw) == result, (result, stored_again)
            outcomes.append("accepted")
    return outcomes


# -------------------------------------------------------------- pipelines

STREAM_NOW = parse_rfc3339("2026-11-02T09:30:00Z")  # the generated events' hour: most in time


def _outcomes(payload_list, now_ns: int, attributes: list) -> Counter:
    return Counter(o for p, a in zip(payload_list, attributes)
                   for o in check_payload(p, now_ns, a))


def _each(check):
    """A matcher that runs `check` on every element (and so fails the pipeline)."""
    def match(elements):
        for element in elements:
            check(element)
    return match


def check_compute_usage(payload_list: list[bytes], attributes: list | None = None) -> Counter:
    """Runs ComputeUsage (two batches, two shards) on the DirectRunner: its counts
    conserve every record, agree with the pure path, and every output is storable.
    Returns the outcomes by the pure path. `attributes`: each payload's, if any."""
    attributes = attributes or [None] * len(payload_list)
    expected = _outcomes(payload_list, NOW, [a or {} for a in attributes])
    items = [Payload(f"f:{n}", ("f", n), p, None, a)
             for n, (p, a) in enumerate(zip(payload_list, attributes))]

    def conserved(counters):
        total = Counter()
        for c in counters:
            total.update(c)
        assert total["records"] == sum(expected.values())
        assert total["dead_lettered"] == expected["dead_lettered"]
        assert total["accepted"] + total["duplicates"] == expected["accepted"]
        assert total["lines"] == len(payload_list)

    with TestPipeline() as p:
        out = p | beam.Create([items[:len(items) // 2], items[len(items) // 2:]]) | ComputeUsage(
            CATALOG, LIMITS, WINDOW_NS, shards=2)
        assert_that(out["counts"] | beam.combiners.ToList(), _each(conserved), label="conserved")
        assert_that(out["usage"], _each(stored), label="usage rows")
        assert_that(out["dead_letters"], _each(check_rejection), label="dead letters")
    return expected


def check_stream_usage(payload_list: list[bytes], attributes: list | None = None) -> Counter:
    """Runs StreamUsage under TestStream: dead letters + accepted + duplicates = records,
    too-late events are accepted ones, every output is storable. Returns the outcomes
    by the pure path. `attributes`: each message's (default {"k": "v"})."""
    attributes = attributes or [{"k": "v"}] * len(payload_list)
    expected = _outcomes(payload_list, STREAM_NOW, attributes)
    stream = TestStream().advance_watermark_to(event_timestamp(STREAM_NOW - 3 * WINDOW_NS))
    stream.add_elements([Payload(f"m{n}", (), payload, STREAM_NOW, message_attributes)
                         for n, (payload, message_attributes)
                         in enumerate(zip(payload_list, attributes))],
                        event_timestamp=event_timestamp(STREAM_NOW))
    stream.advance_watermark_to_infinity()

    def conserved_and_storable(outputs):
        kinds = Counter(kind for kind, _ in outputs)
        assert kinds["dead_letters"] == expected["dead_lettered"]
        assert kinds["accepted"] + kinds["duplicates"] == expected["accepted"]
        assert kinds["too_late"] <= kinds["accepted"]
        for kind, element in outputs:
            if kind == "dead_letters":
                check_rejection(element)
            elif kind == "accepted":
                check_event(element)
            elif kind == "usage":
                stored(usage_pane_row(element, False, STREAM_NOW, "job")[1])

    pipeline = TestPipeline(options=StandardOptions(streaming=True))
    out = pipeline | stream | StreamUsage(CATALOG, Limits(now_ns=None), WINDOW_NS, WINDOW_NS,
                                          60, 3 * WINDOW_NS)
    tagged = [out[kind] | f"Tag{kind}" >> beam.Map(lambda e, k=kind: (k, e))
              for kind in ("dead_letters", "accepted", "duplicates", "too_late", "usage")]
    everything = tagged | beam.Flatten() | beam.WindowInto(GlobalWindows())
    assert_that(everything, conserved_and_storable)
    pipeline.run().wait_until_finish()
    return expected
