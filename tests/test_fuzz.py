"""No payload can stop a pipeline: property-based fuzzing of the per-event path.

Hostile payloads (tests/adversarial.py) go through every pure step (parse,
FastAccept, validation, dedup signature, readings, both aggregations, every row
and message, each encoded as its sink would) and through `ComputeUsage` and
`StreamUsage` on the DirectRunner. Each record must end in exactly one outcome
(accepted, duplicate or dead-lettered; too-late events are accepted ones), and
every output must be storable. Seeded (derandomized) and short; a run of
minutes is benchmarks/fuzz.py.
"""
import base64
import json
from collections import Counter
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemas import events
from schemas.events import parse_payload
from tests.adversarial import (CATALOG, LIMITS, binary_messages, check_compute_usage,
                               check_payload, check_rejection, check_stream_usage,
                               compressed_messages, payloads)
from transforms import batch_usage
from transforms.pubsub import dead_letter_message
from transforms.rows import dead_letter_row, event_row

# Shrinking a pipeline failure would rerun the pipeline for minutes; the report is enough.
NO_SHRINK = (Phase.explicit, Phase.generate)
SEEDED = settings(derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
EVENT = ('{"specversion":"1.0","id":"%s","source":"//s","type":"call","subject":"%s",'
         '"time":"2026-11-02T09:00:00Z","data":{"region":%s,"amount":%s,"user":"u"}}')


def call(amount="1", region='"eu"', subject="acme", event_id="e1") -> bytes:
    return (EVENT % (event_id, subject, region, amount)).encode()


def parse(payload: bytes):
    return parse_payload(payload, "f:1", ("f", 1), CATALOG, LIMITS)


@SEEDED
@given(payloads())
def test_every_pure_step_is_total(payload):
    assert set(check_payload(payload)) <= {"accepted", "dead_lettered"}


@SEEDED
@given(binary_messages())
def test_every_pure_step_is_total_in_binary_mode(message):
    data, attributes = message
    assert check_payload(data, attributes=attributes) in (["accepted"], ["dead_lettered"])


@SEEDED
@given(compressed_messages())
def test_every_pure_step_is_total_for_compressed_messages(message):
    data, attributes = message
    assert set(check_payload(data, attributes=attributes)) <= {"accepted", "dead_lettered"}


BINARY = {"ce-specversion": "1.0", "ce-id": "b1", "ce-source": "//s", "ce-type": "call",
          "ce-subject": "acme", "ce-time": "2026-11-02T09:00:00Z"}
BINARY_REGRESSIONS = [
    ({**BINARY, "content-type": "application/json; x=\ud800"}, "INVALID_UNICODE"),
    ({**BINARY, "ce-\ud800": "x"}, "INVALID_ATTRIBUTE"),
    ({**BINARY, "ce-region": "\ud800"}, "INVALID_UNICODE"),
    ({**BINARY, "ce-time": "\ud800"}, "INVALID_UNICODE"),
    ({**BINARY, "ce-subject": "\x1b]0;pwned\x07"}, "INVALID_CHARACTER"),
    ({**BINARY, "ce-id": "\u00e9" * 513}, "INVALID_ATTRIBUTE"),
    ({**BINARY, "content-type": "\ud800"}, "INVALID_UNICODE"),
    ({**BINARY, "content-type": "application/cloudevents+\ud800"}, "UNSUPPORTED_CONTENT_TYPE"),
]


@pytest.mark.parametrize("attributes,code", BINARY_REGRESSIONS,
                         ids=[c for _, c in BINARY_REGRESSIONS])
def test_hostile_attributes_are_dead_letters_with_a_precise_code(attributes, code):
    data = b'{"region":"eu","amount":1,"user":"u"}'
    assert check_payload(data, attributes=attributes) == ["dead_lettered"]
    [rejection] = parse_payload(data, "m", (), CATALOG, LIMITS, None, attributes)
    assert rejection.error_code == code


# The failures the issue found, and their neighbours: each once raised or was unstorable.
TRAILING = "1." + "0" * 1200


def nested(payload: bytes, depth: int) -> bytes:
    """`payload` with an extra data member nested `depth` arrays deep."""
    return payload.replace(b'"user":"u"', b'"user":"u","x":' + b"[" * depth + b"]" * depth)
REGRESSIONS = [
    (call(subject="\\ud800"), "INVALID_UNICODE"),
    (call(event_id="\\udc00x"), "INVALID_UNICODE"),
    (call(region='"\\ud83d"'), "INVALID_UNICODE"),
    (b"[" + nested(call(), 600) + b"]", "TOO_DEEP"),
    (nested(call(), 450), "TOO_DEEP"),
    (b"[" * 2000 + b"]" * 2000, "TOO_DEEP"),
    (call(amount="1E999999999"), "VALUE_OUT_OF_RANGE"),
    (call(amount='"1E99999999999999999999"'), "VALUE_OUT_OF_RANGE"),
    (call(amount="1E99999999999999999999"), "VALUE_OUT_OF_RANGE"),  # beyond any Decimal
    (b"[" + call(amount="-1E-99999999999999999999") + b"]", "VALUE_OUT_OF_RANGE"),
    (call(amount="1" * 5000), "VALUE_OUT_OF_RANGE"),  # beyond Python's int-to-text limit
    (call(region="1E999999999"), "DIMENSION_TOO_LONG"),
    (call(region="1E-999999999"), "DIMENSION_TOO_LONG"),
    (call(region='"%s"' % ("r" * 5000)), "DIMENSION_TOO_LONG"),
    (call(subject="a\\u001b]0;pwned\\u0007"), "INVALID_CHARACTER"),
    (call(subject="\\u202eevil"), "INVALID_CHARACTER"),
    (call(subject="\\u0000"), "INVALID_CHARACTER"),
    (call(subject="\\u009b31m"), "INVALID_CHARACTER"),
    (call(subject=" \\u3000 "), "EMPTY_ATTRIBUTE"),
    (b'{"id":"\xff","x":1}', "INVALID_UNICODE"),
    (b'\xed\xa0\x80', "INVALID_UNICODE"),
]


@pytest.mark.parametrize("payload,code", REGRESSIONS, ids=[c for _, c in REGRESSIONS])
def test_hostile_payloads_are_dead_letters_with_a_precise_code(payload, code):
    assert check_payload(payload) == ["dead_lettered"]
    assert [r.error_code for r in parse(payload)] == [code]


@pytest.mark.parametrize("spelling", [TRAILING, f'"{TRAILING}"', "0E-1000", '"0E-1000"',
                                      "1E+0", "0.00000000000000000000", "-0E+999999999"])
def test_values_of_any_spelling_sum_exactly_in_both_modes(spelling):
    events = parse(call(amount=spelling))
    assert check_payload(call(amount=spelling)) == ["accepted"]
    amount = {r.meter: r.value for r in events[0].readings}["amount"]
    assert amount == Decimal(spelling.strip('"'))


def test_a_dimension_with_a_thousand_trailing_zeros_is_its_number():
    (event,) = parse(call(region=TRAILING))
    assert {r.meter: r.dimensions for r in event.readings}["amount"] == '{"region":"1"}'


def test_a_payload_that_is_not_utf8_keeps_its_bytes_in_every_dead_letter():
    payload = b'{"id":"caf\xe9"}'
    (rejection,) = parse(payload)
    check_rejection(rejection)
    assert rejection.payload == '{"id":"caf\ufffd"}' and rejection.payload_bytes == payload
    row = dead_letter_row(rejection, "p", "j")[1]
    assert base64.b64decode(row["payload_bytes"]) == payload


@pytest.mark.parametrize("number", ["1E99999999999999999999", "-1E-99999999999999999999"])
def test_a_number_no_decimal_can_hold_is_carried_verbatim_where_no_meter_reads_it(number):
    """orjson reads these as infinity or 0.0; the fast path must agree with the validator."""
    payload = b"[" + call().replace(b'"user":"u"', b'"user":"u","x":%s' % number.encode()) + b"]"
    assert check_payload(payload) == ["accepted"]
    (event,) = parse(payload)
    assert event.raw.endswith('"x":%s}}' % number)
    assert event_row(event, "job")[1]["raw"] == event.raw
    (as_id,) = parse(call().replace(b'"e1"', number.encode()))
    assert as_id.error_code == "INVALID_ATTRIBUTE"  # a number, however large, is no string
    (as_region,) = parse(call(region=number))  # its plain digits are far past the limit,
    assert as_region.error_code == "DIMENSION_TOO_LONG"  # as 1E999999999's are


def test_a_pubsub_dead_letter_fits_pubsub_limits_and_keeps_the_bytes():
    rejection = parse(b'{"id":"\xff", "note":"%s"}' % ("\u00e9" * 900).encode())[0]
    rejection = rejection._replace(error_message="\u00e9" * 2000, position="\u00e9" * 600)
    message = dead_letter_message(rejection)
    assert message.data == rejection.payload_bytes
    assert all(len(v.encode("utf-8")) <= 1024 for v in message.attributes.values())
    assert message.attributes["error_message"] == "\u00e9" * 512


def test_duplicate_member_names_take_the_last_in_both_paths():
    payload = call(amount="1").replace(b'"amount":1', b'"amount":1,"amount":5')
    assert check_payload(payload) == ["accepted"]
    assert {r.meter: r.value for r in parse(payload)[0].readings}["amount"] == 5


def test_a_window_sum_beyond_numeric_is_routed_to_failed_writes_not_raised():
    """Found by the long fuzz run: two valid NUMERIC values whose sum no NUMERIC holds;
    the pane row is then a `failed_writes` row, as WriteRows routes it."""
    payload = json.dumps({"specversion": "1.0", "id": "e1", "source": "//b", "type": "ledger",
                          "subject": "acme", "time": "2026-11-20T09:00:00Z",
                          "data": {"delta": "99999999999999999999999999999.999999999",
                                   "level": {"value": 1}}})
    assert check_payload(payload.encode()) == ["accepted"]


def test_a_time_with_a_huge_fraction_is_read_to_the_nanosecond():
    payload = call().replace(b"09:00:00Z", b"09:00:00." + b"9" * 100_000 + b"Z")
    assert check_payload(payload) == ["accepted"]
    assert parse(payload)[0].time_ns % 10 ** 9 == 999_999_999


def test_a_bug_judging_a_payload_dead_letters_it_whole_instead_of_raising(monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(events, "loads_exact", broken)
    (rejection,) = parse(b'{"id":"caf\xe9"}')
    assert rejection.error_code == "UNEXPECTED_ERROR" and "KeyError" in rejection.error_message
    assert rejection.payload_bytes == b'{"id":"caf\xe9"}'
    check_rejection(rejection)


class BrokenFastPath:
    def accept(self, payload, now_ns):
        raise IndexError("a bug")


def test_a_fast_path_bug_leaves_the_event_to_the_full_validator(monkeypatch):
    monkeypatch.setattr(batch_usage._ParseBatch, "setup",
                        lambda self: setattr(self, "_fast", BrokenFastPath()))
    assert check_compute_usage([call(), call(amount='"x"', event_id="e2")]) == \
        Counter(accepted=1, dead_lettered=1)


# ------------------------------------------------------------- pipelines

batches_of_payloads = st.lists(payloads(), min_size=40, max_size=80)


@settings(SEEDED, max_examples=2, phases=NO_SHRINK)
@given(batches_of_payloads)
def test_compute_usage_conserves_and_stores_every_record(payload_list):
    check_compute_usage(payload_list)


@settings(SEEDED, max_examples=2, phases=NO_SHRINK)
@given(batches_of_payloads)
def test_stream_usage_conserves_and_stores_every_record(payload_list):
    check_stream_usage(payload_list)


@settings(SEEDED, max_examples=1, phases=NO_SHRINK)
@given(st.lists(binary_messages(), min_size=40, max_size=80))
def test_both_pipelines_conserve_and_store_every_binary_mode_record(messages):
    data, attributes = map(list, zip(*messages))
    check_compute_usage(data, attributes)
    check_stream_usage(data, attributes)


@settings(SEEDED, max_examples=1, phases=NO_SHRINK)
@given(st.lists(compressed_messages(), min_size=40, max_size=80))
def test_the_stream_conserves_and_stores_every_compressed_record(messages):
    data, attributes = map(list, zip(*messages))
    check_stream_usage(data, attributes)
