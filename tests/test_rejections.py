"""What parsing records: an accepted event keeps what the `events` table stores (the event
as received, where and when it was received); a dead letter (SPEC §4 `dead_letter`) the
payload as received (a batch element's own JSON), where it came from, the event's
identity when it has one, the Pub/Sub attributes and the ingest time, and a message
naming what was wrong."""
import base64
import json

import pytest

from schemas.events import Limits, Rejection, UsageEvent, parse_payload
from schemas.values import parse_rfc3339
from tests.conftest import event

INGEST = parse_rfc3339("2026-11-21T00:00:00.123456789Z")
ATTRIBUTES = {"ce-type": "call"}


@pytest.fixture
def rejected(catalog):
    def parse(payload: bytes) -> list[Rejection]:
        results = parse_payload(payload, "m-1", (1,), catalog, Limits(now_ns=None), INGEST,
                                ATTRIBUTES)
        assert all(isinstance(r, Rejection) for r in results)
        return results
    return parse


def test_a_rejected_event_keeps_its_payload_identity_attributes_and_ingest_time(rejected):
    doc = event(id="neg", source="//s", data={"amount": "-1", "user": "u"})
    payload = json.dumps(doc).encode()
    [r] = rejected(payload)
    assert r == Rejection("VALUE_NEGATIVE", r.error_message, payload.decode(), "m-1", "//s",
                          "neg", ATTRIBUTES, INGEST)


def test_a_batch_element_is_dead_lettered_as_its_own_json(rejected):
    bad = event(id="neg", source="//s", data={"amount": "-1", "user": "ü"})
    [r] = rejected(json.dumps([bad]).encode())
    assert (r.payload, r.position, r.event_source, r.event_id, r.attributes, r.ingest_ns) == (
        json.dumps(bad, separators=(",", ":"), ensure_ascii=False), "m-1#0", "//s", "neg",
        ATTRIBUTES, INGEST)


@pytest.mark.parametrize("element,kind", [
    (True, "boolean"), (None, "null"), ([], "array"), ("text", "string"), (7, "number")])
def test_a_batch_element_that_is_no_object_says_what_it_is(rejected, element, kind):
    [r] = rejected(json.dumps([element]).encode())
    assert (r.error_code, r.error_message, r.payload) == (
        "NOT_AN_OBJECT", f"event is a JSON {kind}, not an object", json.dumps(element))


def test_an_accepted_event_keeps_what_the_events_table_stores(catalog):
    doc = event(id="ok", data={"amount": "1.50", "user": "ü"})
    payload = json.dumps(doc).encode()
    single = parse_payload(payload, "m-1", (1,), catalog, Limits(now_ns=None), INGEST)
    batch = parse_payload(json.dumps([doc]).encode(), "m-2", (2,), catalog,
                          Limits(now_ns=None), INGEST)
    assert all(isinstance(e, UsageEvent) for e in single + batch)
    assert [(e.raw, e.position, e.order, e.ingest_ns) for e in single + batch] == [
        (payload.decode(), "m-1", (1,), INGEST),
        (json.dumps(doc, separators=(",", ":"), ensure_ascii=False), "m-2#0", (2, 0), INGEST)]


def test_identifier_length_limit_is_inclusive(catalog):
    limits = Limits(now_ns=None, max_identifier_length=8)
    ok, too_long = (parse_payload(json.dumps(event(id=i, data={"amount": 1, "user": "u"}))
                                  .encode(), "m", (1,), catalog, limits, INGEST)[0]
                    for i in ("x" * 8, "x" * 9))
    assert isinstance(ok, UsageEvent) and isinstance(too_long, Rejection)


def test_every_problem_of_an_event_is_in_its_message(rejected):
    future = event(time="2026-11-21T00:10:00Z", data={"amount": 1, "user": "u"})
    [skew] = rejected(json.dumps(future).encode())
    assert skew.error_code == "FUTURE_TIME"
    assert skew.error_message.endswith(" s ahead of processing time")
    assert f" {Limits(now_ns=None).max_future_skew_ns // 10 ** 9} s " in skew.error_message
    negative = event(data={"amount": -1, "user": "u"})
    [value] = rejected(json.dumps(negative).encode())
    [both] = rejected(json.dumps({**future, "data": negative["data"]}).encode())
    assert both.error_message == f"{skew.error_message}; {value.error_message}"


@pytest.mark.parametrize("payload,code,message", [
    (b" ", "MALFORMED_JSON", "empty payload"),
    (b"[]", "EMPTY_BATCH", "CloudEvents batch contains no event"),
    (b"{oops", "MALFORMED_JSON", None),
])
def test_a_payload_that_holds_no_event_is_one_dead_letter(rejected, payload, code, message):
    [r] = rejected(payload)
    assert (r.error_code, r.payload, r.position) == (code, payload.decode(), "m-1")
    if message:
        assert r.error_message == message
    else:
        assert r.error_message.startswith("not valid JSON: ")


def test_attribute_messages_name_the_kind_and_a_missing_time_is_rejected(rejected):
    [r] = rejected(json.dumps(event(id={"n": 1}, data={"amount": 1, "user": "u"})).encode())
    assert "attribute id must be a string, got object" in r.error_message
    doc = event(data={"amount": 1, "user": "u"})
    del doc["time"]
    [r] = rejected(json.dumps(doc).encode())
    assert r.error_code == "MISSING_ATTRIBUTE" and "time" in r.error_message


def test_a_payload_that_is_not_utf8_keeps_its_bytes_and_a_utf8_one_needs_none(rejected):
    # payload_bytes holds the bytes only where the payload text cannot be them
    not_utf8 = b'{"id": "caf\xe9"}'
    [r] = rejected(not_utf8)
    assert (r.error_code, r.payload, r.payload_bytes) == (
        "INVALID_UNICODE", '{"id": "caf\ufffd"}', not_utf8)
    for utf8 in (b'{"id": "caf\xc3\xa9"}', b"{oops", b"[]"):
        [r] = rejected(utf8)
        assert (r.payload, r.payload_bytes) == (utf8.decode(), None)


def call(**changes) -> bytes:
    """A valid call event, with members changed (None: left out)."""
    doc = {**event(data={"amount": 1, "user": "u"}), **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


TOO_DEEP_IN_DATA = ("arrays and objects are nested more than 63 levels deep (64 with the event "
                    "around them)")


def base64_of(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("payload,code,message", [
    (b'{"a": "\\ud800"}', "INVALID_UNICODE", "a string holds a lone UTF-16 surrogate escape "
     "(\\ud800-\\udfff without its pair), which is not Unicode text"),
    (b"[" * 5000 + b"]" * 5000, "TOO_DEEP", "nested too deep to parse (the limit is 64 levels)"),
    (call(time="2026-11-21T00:10:00Z"), "FUTURE_TIME",
     "time 2026-11-21T00:10:00Z is more than 300 s ahead of processing time"),
    (call(specversion="0.3"), "UNSUPPORTED_SPECVERSION",
     "specversion '0.3' is not supported (only 1.0)"),
    (call(id=None, source=""), "MISSING_ATTRIBUTE",
     "required attribute id is missing; attribute source is empty"),
    (call(subject=17), "INVALID_ATTRIBUTE", "attribute subject must be a string, got number"),
    (call(id="x" * 257), "INVALID_ATTRIBUTE", "attribute id is longer than 256 characters"),
    (call(subject="acme\x1b[2J"), "INVALID_CHARACTER",
     "attribute subject holds the control or formatting character U+001B at 4"),
    (call(source="\u3000 "), "EMPTY_ATTRIBUTE", "attribute source is only whitespace"),
    (call(datacontenttype=7), "INVALID_ATTRIBUTE",
     "attribute datacontenttype must be a string, got number"),
    (call(datacontenttype="text/plain"), "UNSUPPORTED_CONTENT_TYPE", "datacontenttype "
     "'text/plain' is not JSON: tallyflow meters JSON data only (application/json, or a +json "
     "type)"),
    (call(data_base64=base64_of(b"{}")), "INVALID_DATA_BASE64",
     "the event holds both data and data_base64"),
    (call(data=None, data_base64=[1]), "INVALID_DATA_BASE64",
     "data_base64 is not base64: a JSON array, not a string"),
    (call(data=None, data_base64=base64_of(b"[" * 70 + b"]" * 70)), "TOO_DEEP",
     f"data_base64: {TOO_DEEP_IN_DATA}"),
])
def test_what_a_dead_letter_says_is_wrong(rejected, payload, code, message):
    [r] = rejected(payload)
    assert (r.error_code, r.error_message) == (code, message)


@pytest.mark.parametrize("encoded", ["not base64!", base64_of(b"{}")[:-1],
                                     base64_of(b'{"amount": 1}') + "\n", " " + base64_of(b"{}")])
def test_data_base64_is_strict_rfc_4648_and_the_dead_letter_says_why(rejected, encoded):
    """Padding required, no whitespace or other characters (RFC 4648 §3.3: non-alphabet
    characters are rejected unless a specification says otherwise)."""
    with pytest.raises(ValueError) as strict:  # the standard library's strict decoder
        base64.b64decode(encoded, validate=True)
    [r] = rejected(call(data=None, data_base64=encoded))
    assert (r.error_code, r.error_message) == (
        "INVALID_DATA_BASE64", f"data_base64 is not base64: {strict.value}")


def test_a_bug_judging_a_payload_is_a_dead_letter_naming_the_error(rejected, monkeypatch):
    def broken(*args):
        raise KeyError("a bug")

    monkeypatch.setattr("schemas.events._parse", broken)
    [r] = rejected(b'{"id": "e1"}')
    assert r == Rejection("UNEXPECTED_ERROR", "tallyflow could not judge this payload (KeyError: "
                          "'a bug'); please report it", '{"id": "e1"}', "m-1", None, None,
                          ATTRIBUTES, INGEST)


def test_an_identity_that_is_no_text_is_not_recorded_as_one(rejected):
    [r] = rejected(call(source=17, id=True))
    assert (r.error_code, r.event_source, r.event_id) == ("INVALID_ATTRIBUTE", None, None)
    [r] = rejected(call(source="", id="e1"))
    assert (r.error_code, r.event_source, r.event_id) == ("EMPTY_ATTRIBUTE", None, "e1")
