"""CloudEvents conformance, checked with the official `cloudevents` SDK.

Events are written by the SDK in structured mode (`to_structured`), as
CloudEvents batches (JSON arrays of `to_json`) and in binary mode (`to_binary`:
its HTTP headers are the Pub/Sub binding's attributes, `ce-<name>` and
`content-type`, one to one). Whatever the mode, an event must read the same, bill
the same, and be rejected with the same code; a binary event's stored `raw` must
re-read (recompute, explain) as the event itself.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
from collections import Counter, defaultdict
from decimal import Decimal

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindows
from cloudevents.v1.conversion import to_binary, to_json, to_structured
from cloudevents.v1.http import CloudEvent

from schemas.catalog import CatalogError, parse_catalog
from schemas.events import (MAX_DEPTH, Limits, Payload, Rejection, UsageEvent,
                            is_json_content_type, parse_payload)
from schemas.values import parse_rfc3339
from tallyflow.local.publish import Outgoing
from tallyflow.local.synthetic import INVALID, SyntheticConfig, generate
from tallyflow.reports import explain
from tallyflow.local.publish import main as publish_main
from transforms.batch_usage import ComputeUsage
from transforms.rows import event_row
from transforms.streaming import StreamUsage
from transforms.windowing import event_timestamp

NS = 1_000_000_000
HOUR_NS = 3600 * NS
NOW = parse_rfc3339("2026-11-02T12:00:00Z")
LIMITS = Limits(now_ns=NOW)
CATALOG = parse_catalog({"meters": [
    {"key": "tokens", "event_type": "llm.completion", "aggregation": "SUM",
     "value_property": "$.tokens", "group_by": {"model": "$.model", "region": "@region"}},
    {"key": "completions", "event_type": "llm.completion", "aggregation": "COUNT"},
    {"key": "users", "event_type": "llm.completion", "aggregation": "UNIQUE_COUNT",
     "value_property": "$.user"},
]})
STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}


def sdk_event(n: int, **attributes) -> CloudEvent:
    """The n-th sample event: three customers, two models, two regions (an extension)."""
    return CloudEvent({
        "specversion": "1.0", "id": f"ev-{n}", "source": "//conformance", "type": "llm.completion",
        "subject": f"cust-{n % 3}", "time": f"2026-11-02T{9 + n % 2:02d}:{n % 60:02d}:07.5Z",
        "region": ("eu", "us")[n % 2], **attributes,
    }, {"tokens": f"{n}.25" if n % 4 else n, "model": ("small", "large")[n % 3 % 2],
        "user": f"u{n % 5}"})


SAMPLE = [sdk_event(n) for n in range(24)]


def structured(event: CloudEvent, position: str) -> Payload:
    headers, body = to_structured(event)
    return Payload(position, (position,), body, NOW, headers)


def binary(event: CloudEvent, position: str) -> Payload:
    headers, body = to_binary(event)
    return Payload(position, (position,), body, NOW, headers)


def batch(events: list[CloudEvent], position: str) -> Payload:
    body = b"[" + b",".join(to_json(e) for e in events) + b"]"
    return Payload(position, (position,), body, NOW, BATCH)


def parsed(payload: Payload) -> list:
    return payload.parse(CATALOG, LIMITS)


def billed(event: UsageEvent) -> tuple:
    """Everything of an accepted event that can bill, dedup or show: all but where it came from."""
    return (event.source, event.id, event.type, event.subject, event.time_ns, event.readings)


def expected_usage(events: list[CloudEvent], window_ns: int = HOUR_NS) -> dict:
    """{(subject, meter, dimensions, window start): (value text, event count)} from the
    SDK's own view of the events, summed here without tallyflow's parser."""
    sums, counts, users = defaultdict(Decimal), defaultdict(int), defaultdict(set)
    for e in events:
        data = e.get_data()
        window = parse_rfc3339(e["time"]) // window_ns * window_ns
        tokens_key = (e["subject"], "tokens", json.dumps(
            {"model": data["model"], "region": e["region"]}, sort_keys=True,
            separators=(",", ":")), window)
        sums[tokens_key] += Decimal(str(data["tokens"]))
        counts[tokens_key] += 1
        for meter in ("completions", "users"):
            key = (e["subject"], meter, "{}", window)
            counts[key] += 1
            users[key].add(data["user"])
    expected = {}
    for key, count in counts.items():
        value = sums[key] if key[1] == "tokens" else (
            count if key[1] == "completions" else len(users[key]))
        expected[key] = (format(value.normalize(), "f") if isinstance(value, Decimal)
                         else str(value), count)
    return expected


# ---------------------------------------------------------------- one event, any mode


def test_every_mode_reads_the_same_event():
    for n, event in enumerate(SAMPLE):
        [s], [b] = parsed(structured(event, "m:s")), parsed(binary(event, "m:b"))
        [a] = [e for e in parsed(batch([SAMPLE[n - 1], event], "m:a")) if e.id == event["id"]]
        assert isinstance(b, UsageEvent), b
        assert billed(s) == billed(b) == billed(a)
        assert dict(json.loads(s.readings[0].dimensions)) == {
            "model": event.get_data()["model"], "region": event["region"]}


def test_where_and_when_a_payload_was_received_reaches_its_event_in_every_mode():
    """Position, order (the dedup's first-copy rule) and ingest time are the message's,
    not the limits' processing time."""
    received = NOW - HOUR_NS
    payloads = {"s": (structured(SAMPLE[1], "m"), "m-s", ("m", 0)),
                "b": (binary(SAMPLE[1], "m"), "m-b", ("m", 1)),
                "a": (batch([SAMPLE[1]], "m"), "m-a", ("m", 2))}
    for mode, (payload, position, order) in payloads.items():
        [accepted] = payload._replace(position=position, order=order, ingest_ns=received).parse(
            CATALOG, LIMITS)
        suffix = "#0" if mode == "a" else ""
        assert (accepted.position, accepted.order, accepted.ingest_ns) == (
            position + suffix, order + ((0,) if suffix else ()), received)


def test_a_binary_events_raw_is_the_structured_event_and_re_reads_as_it():
    event = sdk_event(5, traceparent="00-abc-01")
    [accepted] = parsed(binary(event, "msg-1"))
    raw = json.loads(accepted.raw)
    assert raw == {**{k: v for k, v in event.get_attributes().items()}, "data": event.get_data()}
    assert list(raw)[:6] == ["specversion", "id", "source", "type", "subject", "time"]
    # what the recompute and explain do: re-parse the stored raw, without the message
    [again] = parse_payload(accepted.raw.encode(), "msg-1", (), CATALOG, LIMITS)
    assert billed(again) == billed(accepted) and again.raw == accepted.raw


def test_a_binary_events_raw_is_the_documented_structured_text():
    """docs/cloudevents.md, "What raw stores": required attributes in their order, the
    others by name, then "data": and the data's text verbatim, trimmed."""
    attributes = {"ce-region": "eu", "content-type": "application/json", "ce-time":
                  "2026-11-02T09:00:00Z", "ce-subject": "acme", "ce-type": "llm.completion",
                  "ce-source": "//svc", "ce-id": "e1", "ce-specversion": "1.0"}
    data = b'\r\n\t {"tokens": 5, "model": "small", "user": "u"} \n'
    [accepted] = parsed(Payload("m", (), data, NOW, attributes))
    assert accepted.raw == (
        '{"specversion":"1.0","id":"e1","source":"//svc","type":"llm.completion",'
        '"subject":"acme","time":"2026-11-02T09:00:00Z","datacontenttype":"application/json",'
        '"region":"eu","data":{"tokens": 5, "model": "small", "user": "u"}}')


def test_explain_re_reads_a_stored_binary_event_as_the_event():
    [accepted] = parsed(binary(SAMPLE[2], "msg-9"))
    row = {"raw": accepted.raw, "message_id": "msg-9",
           "ingest_time": dt.datetime.fromtimestamp(NOW // NS, dt.timezone.utc)}
    assert billed(explain._parse_stored(CATALOG, row)) == billed(accepted)


def test_binary_data_is_kept_verbatim_in_raw_numbers_and_all():
    headers = {"ce-specversion": "1.0", "ce-id": "v", "ce-source": "//s",
               "ce-type": "llm.completion", "ce-subject": "c", "ce-time": "2026-11-02T09:00:00Z",
               "content-type": "application/json; charset=utf-8"}
    data = b' {"tokens": 1.50E+2, "model": "m", "user": 7}\n'
    [accepted] = parsed(Payload("m", (), data, NOW, headers))
    assert accepted.raw.endswith(',"data":{"tokens": 1.50E+2, "model": "m", "user": 7}}')
    assert accepted.readings[0].value == Decimal("150")
    assert billed(parse_payload(accepted.raw.encode(), "m", (), CATALOG, LIMITS)[0]) == \
        billed(accepted)


def test_data_base64_is_read_as_the_json_it_encodes():
    plain = sdk_event(3)
    as_bytes = CloudEvent({**plain.get_attributes(), "datacontenttype": "application/json"},
                          json.dumps(plain.get_data()).encode())
    headers, body = to_structured(as_bytes)
    assert b"data_base64" in body  # the SDK's encoding of bytes data
    [decoded] = parsed(Payload("m", (), body, NOW, headers))
    [direct] = parsed(structured(plain, "m"))
    assert billed(decoded) == billed(direct)
    # the events row keeps it as received; its data_base64 decodes to the JSON, as the
    # analysts' FROM_BASE64(JSON_VALUE(raw, '$.data_base64')) reads it (docs/analysts.md)
    stored = json.loads(event_row(decoded, "job")[1]["raw"])
    assert json.loads(base64.b64decode(stored["data_base64"])) == plain.get_data()


def test_extension_attributes_are_kept_in_raw_in_both_modes():
    event = sdk_event(1, comexampleextension1="value", partitionkey="p-7")
    for payload in (structured(event, "m"), binary(event, "m")):
        [accepted] = parsed(payload)
        raw = json.loads(accepted.raw)
        assert (raw["comexampleextension1"], raw["partitionkey"], raw["region"]) == (
            "value", "p-7", "us")


def test_an_attribute_dimension_reads_the_same_whatever_its_json_type():
    # binary attributes are strings; structured extensions may be integers or booleans
    for value, text in ((7, "7"), (True, "true"), ("eu", "eu")):
        doc = json.loads(to_json(sdk_event(2)))
        doc["region"] = value
        [accepted] = parsed(Payload("m", (), json.dumps(doc).encode(), NOW))
        assert json.loads(accepted.readings[0].dimensions)["region"] == text
    doc = json.loads(to_json(sdk_event(2)))
    del doc["region"]
    [accepted] = parsed(Payload("m", (), json.dumps(doc).encode(), NOW))
    assert json.loads(accepted.readings[0].dimensions)["region"] is None
    for value, code in (({"nested": 1}, "DIMENSION_NOT_SCALAR"), ("r" * 1025, "DIMENSION_TOO_LONG")):
        doc["region"] = value
        [rejected] = parsed(Payload("m", (), json.dumps(doc).encode(), NOW))
        assert rejected.error_code == code
    headers, body = to_binary(sdk_event(2, region="r" * 1024))  # Pub/Sub's longest value
    assert json.loads(parsed(Payload("m", (), body, NOW, headers))[0].readings[0].dimensions)[
        "region"] == "r" * 1024


def test_an_attribute_dimension_holding_a_decimal_reads_every_digit():
    """An attribute is parsed exactly too when a meter groups by it, not only data (a
    binary float would read 0.1000000000000000055511151231257827 as 0.1)."""
    digits = "0.1000000000000000055511151231257827"
    doc = json.loads(to_json(sdk_event(2)))
    doc["region"] = "REGION"
    payload = json.dumps(doc).encode().replace(b'"REGION"', digits.encode())
    [accepted] = parsed(Payload("m", (), payload, NOW))
    assert json.loads(accepted.readings[0].dimensions)["region"] == digits


def test_a_structured_message_with_ce_attributes_but_no_specversion_attribute_stays_structured():
    # what tallyflow publish sends, and what a publisher setting filter attributes sends
    headers, body = to_structured(SAMPLE[4])
    [accepted] = parsed(Payload("m", (), body, NOW, {"ce-time": SAMPLE[4]["time"],
                                                     "ce-type": "llm.completion"}))
    assert billed(accepted) == billed(parsed(structured(SAMPLE[4], "m"))[0])


# ---------------------------------------------------------------- rejections, both modes

MISSING = object()
VIOLATIONS = [(name, MISSING, "MISSING_ATTRIBUTE")
              for name in ("specversion", "id", "source", "type", "subject", "time")]
VIOLATIONS += [(name, "", "EMPTY_ATTRIBUTE")
               for name in ("specversion", "id", "source", "type", "subject", "time")]
VIOLATIONS += [
    ("specversion", "0.3", "UNSUPPORTED_SPECVERSION"),
    ("id", "x" * 257, "INVALID_ATTRIBUTE"),
    ("source", "  ", "EMPTY_ATTRIBUTE"),
    ("subject", "acme\x1b[2J", "INVALID_CHARACTER"),
    ("type", "llm\u202e.completion", "INVALID_CHARACTER"),
    ("time", "2026-11-02 09:00:00", "BAD_TIME"),
    ("time", "2026-11-02T09:00:00", "BAD_TIME"),
    ("time", "2026-11-02T12:05:01Z", "FUTURE_TIME"),
    ("datacontenttype", "text/plain", "UNSUPPORTED_CONTENT_TYPE"),
    ("datacontenttype", "application/xml", "UNSUPPORTED_CONTENT_TYPE"),
]


def in_both_modes(name: str, value, event: CloudEvent = SAMPLE[7]) -> tuple[Payload, Payload]:
    """`event` with one attribute set (or removed), as a structured and a binary message."""
    headers, body = to_binary(event)
    doc = json.loads(to_json(event))
    key = "content-type" if name == "datacontenttype" else f"ce-{name}"
    if value is MISSING:
        headers.pop(key, None)
        doc.pop(name, None)
    else:
        headers[key] = value
        doc[name] = value
    return (Payload("s", (), json.dumps(doc).encode(), NOW, STRUCTURED),
            Payload("b", (), body, NOW, headers))


@pytest.mark.parametrize("name,value,code", VIOLATIONS)
def test_every_required_attribute_violation_has_the_same_code_in_both_modes(name, value, code):
    results = [parsed(payload) for payload in in_both_modes(name, value)]
    assert [[r.error_code for r in result] for result in results] == [[code], [code]]


def test_a_binary_rejection_keeps_the_message_as_received():
    structured_message, message = in_both_modes("subject", "")
    [rejected] = parsed(message)
    assert (rejected.payload, rejected.attributes) == (message.data.decode(), message.attributes)
    assert (rejected.event_source, rejected.event_id) == ("//conformance", "ev-7")
    [other] = parsed(structured_message)
    assert other.error_message == rejected.error_message


def binary_message(data: bytes = b'{"tokens": 1, "model": "m", "user": "u"}', **attributes):
    headers, _ = to_binary(SAMPLE[0])
    headers.update(attributes)
    return Payload("b", (), data, NOW, {k: v for k, v in headers.items() if v is not None})


@pytest.mark.parametrize("message,code", [
    (binary_message(b"{oops"), "MALFORMED_JSON"),
    (binary_message(b"\xff\xfe"), "INVALID_UNICODE"),
    (binary_message(b"[" * 70 + b"]" * 70), "TOO_DEEP"),
    (binary_message(**{"ce-data": "{}"}), "INVALID_ATTRIBUTE"),
    (binary_message(**{"ce-re_gion": "eu"}), "INVALID_ATTRIBUTE"),
    (binary_message(**{"ce-": "x"}), "INVALID_ATTRIBUTE"),
    (binary_message(**{"ce-Region": "us"}), "INVALID_ATTRIBUTE"),  # ce-region is "eu"
    (binary_message(**{"Content-Type": "application/xml",
                       "content-type": "application/json"}), "INVALID_ATTRIBUTE"),
    (binary_message(**{"ce-datacontenttype": "text/plain",
                       "content-type": "application/json"}), "INVALID_ATTRIBUTE"),
    (binary_message(**{"ce-region": "r" * 1025}), "INVALID_ATTRIBUTE"),
    (binary_message(**{"ce-region": "\ud800"}), "INVALID_UNICODE"),
    (binary_message(**{"ce-id": "\ud800"}), "INVALID_UNICODE"),
    (binary_message(b"", **{"content-type": "application/json"}), "VALUE_MISSING"),
    (binary_message(**{"content-type": "application/octet-stream"}), "UNSUPPORTED_CONTENT_TYPE"),
    (Payload("m", (), to_json(SAMPLE[0]), NOW, {"content-type": "application/cloudevents+avro"}),
     "UNSUPPORTED_CONTENT_TYPE"),
])
def test_what_only_a_binary_message_can_get_wrong_is_a_precise_dead_letter(message, code):
    [rejected] = parsed(message)
    assert isinstance(rejected, Rejection) and rejected.error_code == code, rejected
    assert rejected.payload_bytes in (None, message.data)


def test_a_cloudevents_format_other_than_json_is_one_dead_letter_as_received():
    message = Payload("m", (), to_json(SAMPLE[0]), NOW,
                      {"Content-Type": "application/cloudevents+avro; v=1"})
    [rejected] = parsed(message)
    assert rejected == Rejection(
        "UNSUPPORTED_CONTENT_TYPE", "content-type 'application/cloudevents+avro; v=1' is not a "
        "JSON event format (application/cloudevents+json)", message.data.decode(), "m",
        attributes=message.attributes, ingest_ns=NOW)


NOT_A_NAME = ("Pub/Sub attribute {!r} is not a CloudEvents attribute (ce- and 1 to 64 letters "
              "and digits, not ce-data)")


@pytest.mark.parametrize("attributes,message", [
    ({"ce-re_gion": "eu"}, NOT_A_NAME.format("ce-re_gion")),
    ({"ce-data": "{}"}, NOT_A_NAME.format("ce-data")),
    ({"ce-region": "eu", "ce-Region": "us"}, "attribute region is given twice, with different "
     "values (names are case-insensitive; content-type is datacontenttype)"),
    ({"ce-region": "\ud800"}, "attribute region holds a lone UTF-16 surrogate, which is not "
                               "Unicode text"),
    ({"ce-partitionkey": "p" * 1025},
     "attribute partitionkey is longer than 1024 bytes (Pub/Sub's limit)"),
    # bytes, not characters: 513 two-byte characters
    ({"ce-region": "\u00e9" * 513}, "attribute region is longer than 1024 bytes (Pub/Sub's limit)"),
    # an identifier has its own limit, in characters, and only that one
    ({"ce-id": "x" * 1025}, "attribute id is longer than 256 characters"),
])
def test_a_binary_attribute_problem_says_what_is_wrong_and_the_rest_is_still_judged(
        attributes, message):
    """Every problem is listed, in the order of the attributes: one found in an early
    attribute does not end the reading of the others (ce-subject, last, is empty)."""
    headers, data = to_binary(SAMPLE[0])
    headers = {**attributes, **headers, "ce-subject": "", **attributes}
    [rejected] = parsed(Payload("b", (), data, NOW, headers))
    assert rejected.error_message == f"{message}; attribute subject is empty", rejected


def test_attributes_that_are_not_the_events_are_passed_over_wherever_they_are():
    """Transport metadata and keys that are no strings (a Pub/Sub client's own, not the
    event's), before the event's attributes, neither end their reading nor enter raw."""
    headers, data = to_binary(SAMPLE[3])
    [expected] = parsed(binary(SAMPLE[3], "b"))
    for first in ({"googclient_origin": "x"}, {7: "x"}, {"content-encoding": "identity"}):
        [accepted] = parsed(Payload("b", (), data, NOW, {**first, **headers}))
        assert (billed(accepted), accepted.raw) == (billed(expected), expected.raw)


@pytest.mark.parametrize("data,content_type,message", [
    (b"\xff", "application/json", "data: not UTF-8: 'utf-8' codec can't decode byte 0xff in "
     "position 0: invalid start byte"),
    (b"[" * 70 + b"]" * 70, "application/json", "data: arrays and objects are nested more than "
     f"{MAX_DEPTH - 1} levels deep ({MAX_DEPTH} with the event around them)"),
    # data that is not JSON under a type that is not JSON: only the type is wrong
    (b"tokens=3", "text/plain", "datacontenttype 'text/plain' is not JSON: tallyflow meters "
     "JSON data only (application/json, or a +json type)"),
])
def test_a_binary_messages_data_problem_is_named_as_the_datas(data, content_type, message):
    [rejected] = parsed(binary_message(data, **{"content-type": content_type}))
    assert (rejected.error_message, rejected.event_id) == (message, "ev-0")


@pytest.mark.parametrize("content_type,is_json", [
    ("application/json", True), ("text/json", True), ("Application/JSON", True),
    ("application/cloudevents+json", True), ("application/vnd.api+json", True),
    ("application/json; charset=utf-8", True), ("application/json;charset=UTF8", True),
    ('application/json; charset="utf-8"', True), ("application/json; v=1; charset=utf-8", True),
    ("text/plain", False), ("application/xml", False), ("+json", False), ("json", False),
    ("application/json; charset=latin-1", False), ("application/json;charset=latin-1", False),
    ("application/json; v=1; charset=latin-1", False),
    ("application/json; charset=latin-1=utf-8", False),
    ('application/json; charset=X"utf-8', False), (7, False), (None, False),
])
def test_what_counts_as_a_json_content_type(content_type, is_json):
    """JSON format 1.0 §3.1: application/json, text/json or a +json type, in any case;
    a charset parameter, if any, is UTF-8."""
    assert is_json_content_type(content_type) is is_json


@pytest.mark.parametrize("levels,code", [(MAX_DEPTH, None), (MAX_DEPTH + 1, "TOO_DEEP")])
def test_data_nested_near_the_limit_is_judged_alike_in_every_encoding(levels, code):
    """The limit counts the event object around the data, however the data travels:
    an event `levels` deep (its object, data's object, then arrays)."""
    data = {"tokens": 1, "model": "m", "user": "u", "deep": nested(levels - 2)}
    event = CloudEvent(SAMPLE[0].get_attributes(), data)
    as_base64 = CloudEvent({**SAMPLE[0].get_attributes(), "datacontenttype": "application/json"},
                           json.dumps(data).encode())
    results = [parsed(structured(event, "s")), parsed(binary(event, "b")),
               parsed(structured(as_base64, "64"))]
    assert [r.error_code if isinstance(r, Rejection) else None for [r] in results] == [code] * 3
    for [result] in results:
        if code is None:  # the stored raw re-reads within the limit too
            assert isinstance(parsed(Payload("r", (), result.raw.encode(), NOW))[0], UsageEvent)


def nested(depth: int):
    """A value nested `depth` arrays deep."""
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def test_binary_attribute_names_are_case_insensitive_and_datacontenttype_may_be_ce_():
    """The binding: "Attribute names are case-insensitive"; its example carries the
    content type as ce-datacontenttype."""
    headers, data = to_binary(SAMPLE[3])
    spelled = {("CE-" + k[3:].upper() if k.startswith("ce-") else k): v
               for k, v in headers.items()}
    for attributes in (spelled, {**spelled, "Content-Type": "application/json"},
                       {**headers, "ce-datacontenttype": "application/json; charset=utf-8"},
                       {**headers, "ce-datacontenttype": "application/json",
                        "content-type": "application/json"}):
        [accepted] = parsed(Payload("b", (), data, NOW, attributes))
        assert billed(accepted) == billed(parsed(structured(SAMPLE[3], "s"))[0]), attributes
    [structured_too] = parsed(Payload("s", (), to_structured(SAMPLE[3])[1], NOW,
                                      {"Content-Type": "application/cloudevents+json",
                                       "ce-specversion": "1.0"}))
    assert billed(structured_too) == billed(accepted)


def test_a_binary_event_without_data_is_accepted_where_no_meter_needs_a_value():
    headers, _ = to_binary(SAMPLE[0])
    headers["ce-type"] = "user.login"
    [accepted] = parsed(Payload("b", (), b"", NOW, headers))
    assert accepted.readings == () and "data" not in json.loads(accepted.raw)


@pytest.mark.parametrize("path", ["@Region", "@data", "@", "@re-gion", "@" + "a" * 65])
def test_a_group_by_attribute_must_be_a_cloudevents_attribute_name(path):
    with pytest.raises(CatalogError, match=r"meters\[0\] \(m\)\.group_by\.region"):
        parse_catalog({"meters": [{"key": "m", "event_type": "t", "aggregation": "COUNT",
                                   "group_by": {"region": path}}]})


# ---------------------------------------------------------------- both pipelines


def mixed_structured(events: list[CloudEvent]) -> list[Payload]:
    """Every third event alone in structured mode, the others in CloudEvents batches of two."""
    alone = [structured(e, f"s{n}") for n, e in enumerate(events) if n % 3 == 0]
    rest = [e for n, e in enumerate(events) if n % 3]
    return alone + [batch(rest[i:i + 2], f"a{i}") for i in range(0, len(rest), 2)]


def as_stored(payloads: list[Payload]) -> list[Payload]:
    """The accepted events as the recompute reads them back from `events` (raw only)."""
    return [Payload(e.position, (e.position,), e.raw.encode("utf-8"), NOW)
            for p in payloads for e in parsed(p)]


def bill_identically(outputs: dict, expected: dict):
    """Asserts that every mode's usage rows are byte-identical JSON, and hold `expected`."""
    tagged = [pcoll | f"Tag {mode}" >> beam.Map(
        lambda row, m=mode: (m, json.dumps(row, sort_keys=True))) for mode, pcoll in outputs.items()]

    def check(pairs):
        by_mode = defaultdict(list)
        for mode, row in pairs:
            by_mode[mode].append(row)
        rows = {mode: sorted(found) for mode, found in by_mode.items()}
        assert set(rows) == set(outputs), rows.keys()
        first = rows.pop(next(iter(outputs)))
        for mode, found in rows.items():
            assert found == first, mode
        got = {(r["subject"], r["meter"], r["dimensions"], parse_rfc3339(r["window_start"])):
               (r["value"], r["event_count"]) for r in map(json.loads, first)}
        assert got == expected

    assert_that(tagged | beam.Flatten() | beam.WindowInto(GlobalWindows()), check)


def test_the_recompute_bills_every_mode_and_the_stored_raw_byte_identically():
    binary_messages = [binary(e, f"b{n}") for n, e in enumerate(SAMPLE)]
    batches = {"structured and batch": [mixed_structured(SAMPLE)],
               "binary": [binary_messages[:10], binary_messages[10:]],
               "binary, as stored": [as_stored(binary_messages)]}
    with TestPipeline() as p:
        outputs = {}
        for mode, payloads in batches.items():
            out = p | f"Read {mode}" >> beam.Create(payloads) | f"Compute {mode}" >> ComputeUsage(
                CATALOG, LIMITS, HOUR_NS, shards=2)
            assert_that(out["dead_letters"], equal_to([]), label=f"no dead letters {mode}")
            outputs[mode] = out["usage"]
        bill_identically(outputs, expected_usage(SAMPLE))


def last_panes(rows: list[dict]) -> list[dict]:
    last = {}
    for row in sorted(rows, key=lambda r: r["pane_index"]):
        last[(row["subject"], row["meter"], row["dimensions"], row["window_start"])] = row
    return list(last.values())


def streamed(payloads: list[Payload], path) -> list[str]:
    """StreamUsage's usage rows (JSON) for `payloads`, all on time, under TestStream (one
    per pipeline: the DirectRunner runs a single TestStream), via a file in `path`."""
    stream = TestStream().advance_watermark_to(event_timestamp(NOW - 4 * HOUR_NS))
    stream.add_elements(payloads, event_timestamp=event_timestamp(NOW))
    stream.advance_watermark_to_infinity()
    pipeline = TestPipeline(options=StandardOptions(streaming=True))
    out = pipeline | stream | StreamUsage(CATALOG, Limits(now_ns=None), HOUR_NS, 48 * HOUR_NS,
                                          60, 96 * HOUR_NS)
    target = str(path)

    def keep(record: str):
        with open(target, "a", encoding="utf-8") as f:
            f.write(record + "\n")

    _ = out["usage"] | "Usage" >> beam.Map(lambda row: keep(json.dumps(row, sort_keys=True)))
    _ = out["dead_letters"] | "Dead" >> beam.Map(lambda r: keep(f"dead letter {r}"))
    pipeline.run().wait_until_finish()
    return sorted(path.read_text(encoding="utf-8").splitlines())


def test_the_stream_bills_every_mode_byte_identically(tmp_path):
    by_structured = streamed(mixed_structured(SAMPLE), tmp_path / "structured")
    by_binary = streamed([binary(e, f"b{n}") for n, e in enumerate(SAMPLE)], tmp_path / "binary")
    assert by_structured == by_binary
    got = {(r["subject"], r["meter"], r["dimensions"], parse_rfc3339(r["window_start"])):
           (r["value"], r["event_count"]) for r in last_panes([json.loads(r) for r in by_binary])}
    assert got == expected_usage(SAMPLE)


# ---------------------------------------------------------------- tallyflow publish --binary


def test_publish_binary_writes_what_the_sdk_writes_and_it_bills_as_the_structured_line():
    for event in SAMPLE[:6] + [sdk_event(9, sequence=12, sampled=True)]:
        line = to_json(event)
        [message] = Outgoing.of(line).in_binary_mode()
        headers, body = to_binary(event)
        expected = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in
                    headers.items()}
        assert message.attributes == {**expected, "content-type": "application/json"}
        assert json.loads(message.data) == json.loads(body)
        [sent] = parsed(Payload("m", (), message.data, NOW, message.attributes))
        assert billed(sent) == billed(parsed(Payload("m", (), line, NOW))[0])


def test_publish_binary_splits_a_batch_and_keeps_numbers_and_base64_data_exact():
    data = b'{"tokens": 2.50, "model": "m", "user": "u"}'
    doc = json.loads(to_json(SAMPLE[1]))
    base64_event = {**doc, "id": "b64", "datacontenttype": "application/json",
                    "data_base64": base64.b64encode(data).decode()}
    del base64_event["data"]
    line = b'[' + to_json(SAMPLE[1]).replace(b'"1.25"', b'1.250') + b"," + json.dumps(
        base64_event).encode() + b"]"
    first, second = Outgoing.of(line).in_binary_mode()
    assert b'"tokens":1.250,' in first.data and first.time == SAMPLE[1]["time"]
    assert second.data == data
    assert [e.readings[0].value for e in parsed(Payload("m", (), line, NOW))] == [
        parsed(Payload("m", (), m.data, NOW, m.attributes))[0].readings[0].value
        for m in (first, second)]


@pytest.mark.parametrize("line", [b"{oops", b"[]", b"[1]", b'{"id": 1.5}', b'{"id": {"a": 1}}',
                                  b'{"id": "' + b"x" * 1025 + b'"}',
                                  b'{"data_base64": "%%"}'])
def test_a_line_without_a_binary_form_is_sent_as_it_is(line):
    assert Outgoing.of(line).in_binary_mode() == [Outgoing.of(line)]


def test_publish_binary_refuses_synthetic_batches():
    with pytest.raises(SystemExit) as exit_:
        publish_main(["--synthetic", "--binary", "--batch-size", "2"])
    assert exit_.value.code == 2


def test_a_synthetic_stream_sent_in_binary_mode_keeps_its_labels_true(example_catalog):
    config = SyntheticConfig(seed=23, customers=5, events=600, rate=50, invalid_fraction=0.2,
                             duplicate_fraction=0.1)
    checked = Counter()
    for position, message in enumerate(generate(config)):
        [outgoing] = Outgoing.of(message.data, message.emitted_ns).in_binary_mode()
        [label] = message.labels
        [result] = parse_payload(outgoing.data, str(position), (position,), example_catalog,
                                 Limits(now_ns=message.emitted_ns), None, outgoing.attributes)
        if label.kind == INVALID:
            assert isinstance(result, Rejection) and result.error_code == label.reason, label
        else:
            assert isinstance(result, UsageEvent) and (result.source, result.id) == \
                label.identity
        checked[outgoing.attributes.get("ce-specversion") is not None] += 1
    assert checked[True] > 400  # binary mode was exercised (malformed lines go as they are)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_compressed_synthetic_stream_parses_as_the_uncompressed_one(example_catalog, encoding):
    config = SyntheticConfig(seed=7, customers=5, events=400, rate=50, batch_size=20,
                             invalid_fraction=0.1, duplicate_fraction=0.1)
    for message in generate(config):
        plain = Outgoing.of(message.data, message.emitted_ns)
        for sent in [plain] + plain.in_binary_mode():
            packed = sent.compressed(encoding)
            assert packed.attributes == {**sent.attributes, "content-encoding": encoding}
            assert packed.time == sent.time and packed.data != sent.data
            limits = Limits(now_ns=message.emitted_ns)
            assert parse_payload(packed.data, "m", (), example_catalog, limits, None,
                                 packed.attributes) == parse_payload(
                sent.data, "m", (), example_catalog, limits, None, sent.attributes)
