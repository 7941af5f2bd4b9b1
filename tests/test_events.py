"""CloudEvents validation: every error code, whole-event acceptance, batches."""
import base64
from decimal import Decimal

import pytest

from schemas import events
from schemas.catalog import MAX_TEXT_LENGTH, parse_catalog
from schemas.events import ERROR_CODES, MAX_DEPTH, Limits, Rejection, UsageEvent, parse_payload
from schemas.values import dumps_exact, parse_rfc3339
from tests.conftest import event, line

NOW = parse_rfc3339("2026-11-21T00:00:00Z")
LIMITS = Limits(now_ns=NOW)
CALL = {"region": "eu", "amount": "2.5", "user": "u1"}


def parse(payload: bytes, catalog):
    return parse_payload(payload, "f:1", ("f", 1), catalog, LIMITS)


def one(payload, catalog):
    results = parse(payload, catalog)
    assert len(results) == 1
    return results[0]


def rejected_code(payload, catalog) -> str:
    result = one(payload, catalog)
    assert isinstance(result, Rejection), result
    return result.error_code


def nested(depth: int):
    """A value nested `depth` arrays deep."""
    value = 1
    for _ in range(depth):
        value = [value]
    return value


CASES = [
    (b"{not json", "MALFORMED_JSON"),
    (b"", "MALFORMED_JSON"),
    (b"   ", "MALFORMED_JSON"),
    (b'{"id": "\xff\xfe"}', "INVALID_UNICODE"),
    (b'{"id": "\xed\xa0\x80"}', "INVALID_UNICODE"),  # a surrogate encoded as if UTF-8
    (line(event(subject="\ud800", data=CALL)), "INVALID_UNICODE"),
    (line([event(data={**CALL, "region": "\udfff"})]), "INVALID_UNICODE"),
    (line(event(data={**CALL, "deep": nested(MAX_DEPTH)})), "TOO_DEEP"),
    (b"[" * 5000 + b"]" * 5000, "TOO_DEEP"),
    (line(event(data=CALL)).replace(b'"2.5"', b"1E99999999999999999999"), "VALUE_OUT_OF_RANGE"),
    (b"[]", "EMPTY_BATCH"),
    (b'"just a string"', "NOT_AN_OBJECT"),
    (b"42", "NOT_AN_OBJECT"),
    (b"null", "NOT_AN_OBJECT"),
    (line(event(time=None)), "MISSING_ATTRIBUTE"),
    (line({k: v for k, v in event(data=CALL).items() if k != "subject"}), "MISSING_ATTRIBUTE"),
    (line(event(id="", data=CALL)), "EMPTY_ATTRIBUTE"),
    (line(event(source="", data=CALL)), "EMPTY_ATTRIBUTE"),
    (line(event(id=17, data=CALL)), "INVALID_ATTRIBUTE"),
    (line(event(id="x" * 257, data=CALL)), "INVALID_ATTRIBUTE"),
    (line(event(subject="acme\x1b[2J", data=CALL)), "INVALID_CHARACTER"),
    (line(event(id="e\u202e1", data=CALL)), "INVALID_CHARACTER"),
    (line(event(source="  ", data=CALL)), "EMPTY_ATTRIBUTE"),
    (line(event(specversion="0.3", data=CALL)), "UNSUPPORTED_SPECVERSION"),
    (line(event(time="2026-11-02 09:00:00", data=CALL)), "BAD_TIME"),
    (line(event(time="2026-11-21T00:05:01Z", data=CALL)), "FUTURE_TIME"),
    (line(event(data={**CALL, "amount": None})), "VALUE_MISSING"),
    (line(event(data={"region": "eu", "user": "u1"})), "VALUE_MISSING"),
    (line(event()), "VALUE_MISSING"),
    (line(event(data="amount=3")), "VALUE_MISSING"),
    (line(event(data={**CALL, "amount": [1]})), "VALUE_NOT_SCALAR"),
    (line(event(data={**CALL, "user": {"id": 1}})), "VALUE_NOT_SCALAR"),
    (line(event(data={**CALL, "amount": "three"})), "VALUE_NOT_NUMERIC"),
    (line(event(data={**CALL, "amount": True})), "VALUE_NOT_NUMERIC"),
    (line(event(data={**CALL, "amount": "Infinity"})), "VALUE_NOT_FINITE"),
    (b'{"specversion":"1.0","id":"n","source":"s","type":"call","subject":"a",'
     b'"time":"2026-11-02T09:00:00Z","data":{"region":"eu","user":"u","amount":NaN}}',
     "VALUE_NOT_FINITE"),
    (line(event(data={**CALL, "amount": "-1"})), "VALUE_NEGATIVE"),
    (line(event(data={**CALL, "amount": "1e30"})), "VALUE_OUT_OF_RANGE"),
    (line(event(data={**CALL, "amount": "0.0000000001"})), "VALUE_OUT_OF_RANGE"),
    (line(event(data={**CALL, "region": ["eu"]})), "DIMENSION_NOT_SCALAR"),
    (line(event(data={**CALL, "region": "r" * (MAX_TEXT_LENGTH + 1)})), "DIMENSION_TOO_LONG"),
    (b'{"specversion":"1.0","id":"n","source":"s","type":"call","subject":"a",'
     b'"time":"2026-11-02T09:00:00Z","data":{"region":1E999999999,"user":"u","amount":1}}',
     "DIMENSION_TOO_LONG"),
    # exponents below any context's least (a Decimal holds them, normalize cannot), and
    # exponents no Decimal holds (kept as their text)
    *((line(event(data=CALL)).replace(b'"eu"', tiny), "DIMENSION_TOO_LONG")
      for tiny in (b"1E-1000000000000000005", b"-1000E-1999999999999999997",
                   b"1E+1999999999999999997", b"-2.5e9999999999999999999")),
    (line(event(data={**CALL, "user": "u" * (MAX_TEXT_LENGTH + 1)})), "VALUE_TOO_LONG"),
    (line(event(datacontenttype="text/plain", data="amount=3")), "UNSUPPORTED_CONTENT_TYPE"),
    (line(event(datacontenttype="application/json; charset=latin-1", data=CALL)),
     "UNSUPPORTED_CONTENT_TYPE"),
    (line(event(datacontenttype=7, data=CALL)), "INVALID_ATTRIBUTE"),
    (line(event(data_base64="not base64!")), "INVALID_DATA_BASE64"),
    (line(event(data_base64=17)), "INVALID_DATA_BASE64"),
    (line(event(data=CALL, data_base64=base64.b64encode(line(CALL)).decode())),
     "INVALID_DATA_BASE64"),
    (line(event(data_base64=base64.b64encode(b"{oops").decode())), "MALFORMED_JSON"),
    (line(event(data_base64=base64.b64encode(b'{"a": "\xff"}').decode())), "INVALID_UNICODE"),
]


@pytest.mark.parametrize("payload,code", CASES)
def test_every_error_code(payload, code, catalog):
    assert rejected_code(payload, catalog) == code


def test_every_declared_code_is_exercised():
    # UNEXPECTED_ERROR is a bug's safety net: tests/test_fuzz.py provokes it; the
    # compression codes need a content-encoding attribute: tests/test_encoding.py
    compression = {"UNSUPPORTED_CONTENT_ENCODING", "CORRUPT_COMPRESSION",
                   "DECOMPRESSED_TOO_LARGE"}
    assert {code for _, code in CASES} == set(ERROR_CODES) - {"UNEXPECTED_ERROR"} - compression


def test_a_rejection_lists_every_problem_and_names_the_first_code(catalog):
    doc = event(id="", specversion="2.0", time="soon",
                data={"region": "eu", "amount": "-3", "user": None})
    result = one(line(doc), catalog)
    assert result.error_code == "EMPTY_ATTRIBUTE"
    for fragment in ("id is empty", "specversion '2.0'", "soon", "negative", "null"):
        assert fragment in result.error_message
    assert result.event_source == "//test" and result.event_id is None


def test_event_is_rejected_whole_when_one_meter_fails(catalog):
    # COUNT would accept it, SUM cannot read the amount: no meter may count it
    result = one(line(event(data={"region": "eu", "user": "u1", "amount": "x"})), catalog)
    assert isinstance(result, Rejection) and result.error_code == "VALUE_NOT_NUMERIC"


def test_valid_event_with_all_readings(catalog):
    result = one(line(event(time="2026-11-02T10:00:00+01:00", data=CALL)), catalog)
    assert isinstance(result, UsageEvent)
    assert (result.source, result.id, result.type, result.subject) == ("//test", "e1", "call",
                                                                       "acme")
    assert result.time_ns == parse_rfc3339("2026-11-02T09:00:00Z")
    readings = {r.meter: (r.dimensions, r.value) for r in result.readings}
    assert readings == {
        "calls": ('{"region":"eu"}', None),
        "amount": ('{"region":"eu"}', Decimal("2.5")),
        "users": ("{}", "u1"),
        "low": ("{}", Decimal("2.5")),
        "high": ("{}", Decimal("2.5")),
        "last": ("{}", Decimal("2.5")),
    }


def test_unmetered_type_is_accepted_without_readings(catalog):
    result = one(line(event(type="admin.login", data="anything")), catalog)
    assert isinstance(result, UsageEvent) and result.readings == ()


def test_missing_dimension_is_null_and_numbers_unify_with_strings(catalog):
    result = one(line(event(data={"amount": 1, "user": 7})), catalog)
    readings = {r.meter: (r.dimensions, r.value) for r in result.readings}
    assert readings["amount"] == ('{"region":null}', Decimal(1))
    assert readings["users"] == ("{}", "7")


def test_a_zero_dimension_is_0_however_its_exponent_is_spelled(catalog):
    for zero in (b"0", b"0E+5", b"-0.0e-7", b"0E+1999999999999999997", b"-0.00E-9999999999999999999"):
        result = one(line(event(data=CALL)).replace(b'"eu"', zero), catalog)
        assert {r.meter: r.dimensions for r in result.readings}["amount"] == '{"region":"0"}'


def test_batch_yields_each_element_with_its_own_position(catalog):
    payload = b"[" + line(event(id="a", data=CALL)) + b',17,' + line(event(id="b")) + b"]"
    results = parse(payload, catalog)
    assert [type(r).__name__ for r in results] == ["UsageEvent", "Rejection", "Rejection"]
    assert [r.position for r in results] == ["f:1#0", "f:1#1", "f:1#2"]
    assert results[0].order == ("f", 1, 0)
    assert results[1].error_code == "NOT_AN_OBJECT"
    assert results[2].error_code == "VALUE_MISSING"


def test_time_at_the_skew_limit_is_accepted(catalog):
    result = one(line(event(time="2026-11-21T00:05:00Z", data=CALL)), catalog)
    assert isinstance(result, UsageEvent)


def test_a_stored_event_is_judged_at_the_last_nanosecond_of_its_ingest_microsecond(catalog):
    """`events` keeps the ingest time to the microsecond (123 µs after NOW here): re-read,
    an event is judged as if received at that microsecond's last nanosecond, never before
    it was, so 5 minutes after that nanosecond is accepted and 1 ns more is not."""
    ingest_ns = events.stored_ingest_ns(NOW // 1000 + 123)
    assert ingest_ns == NOW + 123_999
    for time, kind in (("2026-11-21T00:05:00.000123999Z", UsageEvent),
                       ("2026-11-21T00:05:00.000124Z", Rejection)):
        [result] = parse_payload(line(event(time=time, data=CALL)), "m-1", ("m-1",), catalog,
                                 Limits(now_ns=None), ingest_ns)
        assert type(result) is kind
        assert kind is UsageEvent or result.error_code == "FUTURE_TIME"


def wide_and_deep(levels: int) -> bytes:
    """An event `levels` deep (its object, data's object, then arrays) with more
    brackets than MAX_DEPTH side by side, so the cheap bracket count cannot decide."""
    data = {**CALL, "deep": nested(levels - 2), "wide": [[] for _ in range(MAX_DEPTH)]}
    return line(event(data=data))


def test_nesting_exactly_at_the_limit_is_accepted_one_level_more_is_too_deep(catalog):
    assert wide_and_deep(MAX_DEPTH).count(b"[") > MAX_DEPTH
    assert isinstance(one(wide_and_deep(MAX_DEPTH), catalog), UsageEvent)
    too_deep = one(wide_and_deep(MAX_DEPTH + 1), catalog)
    assert (too_deep.error_code, too_deep.error_message) == (
        "TOO_DEEP", f"arrays and objects are nested more than {MAX_DEPTH} levels deep")


@pytest.mark.parametrize("levels,code", [(MAX_DEPTH, None), (MAX_DEPTH + 1, "TOO_DEEP")])
def test_objects_count_as_levels_as_arrays_do(catalog, levels, code):
    deep = 1
    for _ in range(levels - 2):  # inside the event's object and data's object
        deep = {"a": deep}
    result = one(line(event(data={**CALL, "deep": deep})), catalog)
    assert (result.error_code if isinstance(result, Rejection) else None) == code


def test_an_escaped_surrogate_pair_is_the_character_it_encodes(catalog):
    # "\ud83d\ude00" is U+1F600 written as JSON escapes: a pair, not a lone surrogate
    payload = line(event(data={**CALL, "user": "\U0001F600", "n": [1, None, True]}))
    assert b"\\ud83d\\ude00" in payload
    result = one(payload, catalog)
    assert isinstance(result, UsageEvent), result
    assert {r.meter: r.value for r in result.readings}["users"] == "\U0001F600"


GROUPED = parse_catalog({"meters": [{"key": "m", "event_type": "t", "aggregation": "COUNT",
                                     "group_by": {"zone": "$.zone", "app": "$.app"}}]})


def test_dimensions_are_canonical_json_computed_once_per_combination(monkeypatch):
    """Sorted keys, compact, numbers as text; remembered, so a recurring combination is
    serialised once (the memo starts empty here, as in a fresh worker)."""
    monkeypatch.setattr(events, "_DIMENSIONS_CACHE", {})
    serialised = []
    monkeypatch.setattr(events, "dumps_exact",
                        lambda value, **kw: serialised.append(value) or dumps_exact(value, **kw))
    for n in range(2):
        result = one(line(event(id=f"e{n}", type="t", data={"zone": "z", "app": 7})), GROUPED)
        assert [r.dimensions for r in result.readings] == ['{"app":"7","zone":"z"}']
    assert serialised.count({"zone": "z", "app": "7"}) == 1


def test_dimensions_json_sorts_the_keys_it_is_given(monkeypatch):
    monkeypatch.setattr(events, "_DIMENSIONS_CACHE", {})
    assert events.dimensions_json({"zone": "z", "app": None}) == '{"app":null,"zone":"z"}'


def test_the_dimensions_memo_stops_growing_at_its_bound(monkeypatch):
    full = {(("n", str(n)),): "{}" for n in range(100_000)}
    monkeypatch.setattr(events, "_DIMENSIONS_CACHE", full)
    result = one(line(event(type="t", data={"zone": "z", "app": "a"})), GROUPED)
    assert [r.dimensions for r in result.readings] == ['{"app":"a","zone":"z"}']
    assert len(full) == 100_000


def test_identifiers_of_one_character_and_with_inner_or_leading_spaces_are_accepted(catalog):
    # README "Identifiers": 1..256 characters, any text but control and bidi formatting
    # characters, not only whitespace; compared as received
    for identifier in ("x", " x", "a b", "x "):
        result = one(line(event(id=identifier, subject=identifier, data=CALL)), catalog)
        assert isinstance(result, UsageEvent), (identifier, result)
        assert (result.id, result.subject) == (identifier, identifier)
