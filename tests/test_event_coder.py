"""UsageEventCoder: what crosses the shuffle into deduplication, exactly and in few bytes.

An event must come out of the shuffle as it went in: every field, every type (a
Decimal is not its text), every Decimal's digits and exponent (1.0 is not 1.00 to a
BIGNUMERIC column's reader), `raw` to the character. Equality of UsageEvents does not
see exponents (nor is NaN equal to itself), so each round trip compares `repr`s.
"""
import json
import re
from decimal import Decimal

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Limits, Payload, Reading, UsageEvent, parse_payload
from tests.adversarial import CATALOG
from transforms import event_coder
from transforms.aggregate import event_timestamp
from transforms.dedup import KEYED_EVENT, DeduplicateEvents
from transforms.event_coder import MARKED, VERBATIM, UsageEventCoder, decode_event, encode_event

NS = 10 ** 9
NOW = 1_796_000_000 * NS
CODER = beam.coders.registry.get_coder(KEYED_EVENT)
FALLBACK = beam.coders.registry.get_coder(object)
UNPAIRED = re.compile("[\ud800-\udfff]")


def assert_round_trip(event: UsageEvent) -> bytes:
    encoded = encode_event(event)
    assert repr(decode_event(encoded)) == repr(event)
    return encoded


# ------------------------------------------------------------------ any event

SPECIAL = st.sampled_from(['"', "\\", "é", "\u2028", "\ud800", "\udfff", "😀", "\x00",
                           "\t", "\n"] + event_coder._MARKS)
CHARACTERS = st.characters(exclude_categories=())  # surrogates too
TEXT = st.text(st.one_of(CHARACTERS, SPECIAL), max_size=12)
# BIGNUMERIC's 76+ digits, any exponent and sign (-0 too), and what no column holds
DIGITS = st.lists(st.integers(0, 9), min_size=1, max_size=80).map(tuple)
DECIMALS = st.one_of(
    st.builds(lambda sign, digits, exponent: Decimal((sign, digits, exponent)),
              st.integers(0, 1), DIGITS, st.integers(-80, 80)),
    st.decimals(allow_nan=True, allow_infinity=True))
VALUES = st.one_of(DECIMALS, TEXT, st.none())
READINGS = st.lists(st.builds(Reading, TEXT, st.one_of(st.just("{}"), TEXT), VALUES),
                    max_size=4).map(tuple)
HUGE = st.integers(-(2 ** 80), 2 ** 80)  # beyond 64 bits: times of years 1..9999 in ns
TIMES = st.one_of(st.integers(-62_135_596_800 * NS, 253_402_300_799 * NS), HUGE)
ORDERS = st.lists(st.one_of(HUGE, st.integers(0, 10 ** 6), TEXT), max_size=4).map(tuple)


@st.composite
def raws(draw, source, event_id, event_type, subject):
    """`raw` as the parser writes it (the envelope, compact or spaced, ASCII-escaped or
    not), with text inserted (marks included), or any text at all."""
    envelope = {"specversion": "1.0", "id": event_id, "source": source, "type": event_type,
                "subject": subject, "time": "2026-11-02T09:00:00.5+01:00",
                "datacontenttype": "application/json", "data": {"n": draw(TEXT)}}
    keys = draw(st.permutations(list(envelope)))
    text = json.dumps({k: envelope[k] for k in keys}, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    how = draw(st.sampled_from(["as written", "with an insertion", "any text"]))
    if how == "with an insertion":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(TEXT) + text[at:]
    return draw(TEXT) if how == "any text" else text


@st.composite
def usage_events(draw):
    source, event_id, event_type, subject = (draw(TEXT) for _ in range(4))
    return UsageEvent(source, event_id, event_type, subject, draw(TIMES),
                      draw(raws(source, event_id, event_type, subject)), draw(TEXT),
                      draw(ORDERS), draw(READINGS), draw(TIMES))


@settings(max_examples=400, deadline=None)
@given(usage_events())
def test_any_event_comes_back_exactly(event):
    assert_round_trip(event)
    if not any(UNPAIRED.search(part) for part in event.identity):
        keyed = (event.identity, event)  # the parser refuses unpaired surrogates (and
        assert repr(CODER.decode(CODER.encode(keyed))) == repr(keyed)  # so does the key's coder)


# ------------------------------------------------------------ parsed events

def parsed(doc, position="11862383429361714#12", attributes=None, data=None):
    payload = data if data is not None else json.dumps(doc, ensure_ascii=False).encode()
    (event,) = parse_payload(payload, position, (), CATALOG, Limits(now_ns=NOW),
                             NOW, attributes)
    assert isinstance(event, UsageEvent), event
    return event


def ledger(delta, zone="eu", **extra):
    return {"specversion": "1.0", "id": "é-1", "source": "//ledger/ü", "type": "ledger",
            "subject": "cust-ß", "time": "2026-11-02T09:00:00.123456789-05:30",
            "data": {"delta": delta, "level": {"value": 3}, "where": [zone]}, **extra}


def test_parsed_events_come_back_exactly_in_the_marked_form():
    events = [
        parsed(ledger("-12345678901234567890123456789.123456789")),  # BIGNUMERIC, negative
        parsed({**ledger("0"), "type": "call", "data": {"amount": "2.5", "user": 7}}),  # COUNT
        parsed(ledger("1.000E+5", zone=None)),  # an exponent; a missing dimension
        parsed(ledger("-1E-9")),  # negative, an exponent
        parsed(ledger("7", zone="日本\u2028"), position="replay:11862383429361714#0"),
        parsed(ledger("7", dataschema="https://x/s")),
    ]
    assert events[0].readings[0].value < 0 and events[3].readings[0].value < 0
    assert {type(r.value) for r in events[1].readings} == {type(None), Decimal, str}
    assert events[2].readings[2].dimensions == '{"zone":null}'
    for event in events:
        encoded = assert_round_trip(event)
        assert encoded[1] == MARKED
        assert encoded.count(event.id.encode()) == 1  # raw's copy is a mark


def test_batch_and_binary_mode_events_come_back_exactly():
    batch = json.dumps([ledger("1", id="a"), ledger("2", id="b")]).encode()
    events = [e for e in parse_payload(batch, "m-1", (), CATALOG, Limits(now_ns=NOW), NOW)]
    assert [e.order for e in events] == [(0,), (1,)]
    binary = parsed(None, attributes={"ce-specversion": "1.0", "ce-id": "x", "ce-source": "//s",
                                      "ce-type": "ledger", "ce-subject": "c",
                                      "ce-time": "2026-11-02T09:00:00Z",
                                      "content-type": "application/json"},
                    data=b' {"delta": "2.50", "level": {"value": 1}, "where": []} ')
    files = parse_payload(json.dumps(ledger("3")).encode(), "events.jsonl:7",
                          ("events.jsonl", 7), CATALOG, Limits(now_ns=NOW), NOW)
    for event in events + [binary] + files:
        assert_round_trip(event)


def test_a_raw_holding_a_mark_is_kept_verbatim():
    event = parsed(None, data=json.dumps(ledger("1")).encode())._replace(raw='{"a":"\x01"}')
    assert assert_round_trip(event)[1] == VERBATIM
    event = event._replace(raw=json.dumps(ledger("1")), subject="a\x05b")
    assert assert_round_trip(event)[1] == VERBATIM


def test_envelope_words_and_own_literals_said_twice_come_back_exactly():
    """Only the first of each is a mark: the data may say `"id":`, `"type":`, `"data":`
    or the event's own source and subject again."""
    again = {"id": "é-1", "type": "ledger", "source": "//ledger/ü", "subject": "cust-ß",
             "time": "2026-11-02T09:00:00Z", "data": {"specversion": "1.0"},
             "datacontenttype": "application/json"}
    doc = {**ledger("1"), "datacontenttype": "application/json",
           "data": {"delta": "1", "level": {"value": 3}, "where": ["eu"], **again}}
    event = parsed(None, data=json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode())
    for word in ('"id":', '"type":', '"source":', '"data":', '"time":', '"//ledger/ü"',
                 '"cust-ß"', '"application/json"', '"specversion":"1.0"'):
        assert event.raw.count(word) >= 2, word
    assert assert_round_trip(event)[1] == MARKED


def test_what_the_coder_refuses_is_named():
    event = parsed(ledger("1"))
    with pytest.raises(TypeError, match="^an event's order holds ints and text, not float$"):
        encode_event(event._replace(order=(1.5,)))
    with pytest.raises(TypeError, match="^a reading's value is a Decimal, text or None, not int$"):
        encode_event(event._replace(readings=(Reading("m", "{}", 7),)))
    with pytest.raises(ValueError, match=r"^not a shuffled event of format 1 \(format 9\)$"):
        decode_event(b"\x09" + encode_event(event)[1:])


def test_a_synthetic_event_costs_well_under_half_the_fallback_coder_bytes():
    """The BENCHMARKS.md stream: 100-event batches from Pub/Sub."""
    from tallyflow.local.publish import synthetic_messages
    from tallyflow.local.synthetic import SyntheticConfig
    from tests.conftest import EXAMPLE_METERS
    from schemas.catalog import load_catalog

    catalog = load_catalog(EXAMPLE_METERS)
    config = SyntheticConfig(seed=0, customers=50, events=400, rate=10.0,
                             start_ns=NOW - 40 * NS, batch_size=100)
    _, messages = synthetic_messages(config)
    events = [e for n, m in enumerate(messages)
              for e in Payload(str(11862383429361714 + n), (), m.data, NOW, {}).parse(
                  catalog, Limits(now_ns=None)) if isinstance(e, UsageEvent)]
    assert len(events) > 300
    ours = sum(len(CODER.encode((e.identity, e))) for e in events)
    fallback = sum(len(FALLBACK.encode((e.identity, e))) for e in events)
    for event in events:
        assert_round_trip(event)
    assert ours < 0.65 * fallback, (ours / len(events), fallback / len(events))


# ------------------------------------------------------------- in a pipeline

def test_the_deduplication_shuffle_is_encoded_by_this_coder():
    assert CODER == beam.coders.TupleCoder([
        beam.coders.TupleCoder([beam.coders.StrUtf8Coder(), beam.coders.StrUtf8Coder()]),
        UsageEventCoder()])
    assert CODER.key_coder().is_deterministic()  # a stateful DoFn's key


def test_deduplication_keeps_its_outcomes_for_events_that_crossed_the_coder(monkeypatch):
    """A TestStream whose elements are encoded with this coder and decoded by the runner,
    as the shuffle does, into deduplication: exactly the first copies come out."""
    decoded = []

    def counting(self, encoded):
        decoded.append(len(encoded))
        return decode_event(encoded)

    monkeypatch.setattr(UsageEventCoder, "decode", counting)
    base = ledger("1.50")
    first = parsed(base, position="m-1")
    again = parsed(base, position="m-2")  # a duplicate
    respelled = parsed({**base, "data": {**base["data"], "delta": "1.5"}}, position="m-3")
    conflict = parsed({**base, "data": {**base["data"], "delta": "2"}}, position="m-4")
    replayed = parsed({**base, "id": "é-2"}, position="replay:m-5")
    redelivered = parsed({**base, "id": "é-2"}, position="m-5")
    t0 = event_timestamp(first.time_ns)
    stream = (TestStream(coder=UsageEventCoder())
              .advance_watermark_to(event_timestamp(first.time_ns // NS * NS))
              .add_elements([TimestampedValue(first, t0), TimestampedValue(replayed, t0)])
              .advance_processing_time(60)
              .add_elements([TimestampedValue(e, t0) for e in (again, respelled, conflict,
                                                              redelivered)])
              .advance_watermark_to_infinity())
    with TestPipeline(options=StandardOptions(streaming=True)) as p:
        out = p | stream | DeduplicateEvents(horizon_seconds=86400)
        assert_that(out.unique | "exact" >> beam.Map(repr),
                    equal_to([repr(first), repr(replayed)]), label="first copies, exactly")
        assert_that(out.duplicates | beam.Map(lambda d: (d.position, d.kept_position,
                                                         d.conflict)),
                    equal_to([("m-2", "m-1", False), ("m-3", "m-1", False),
                              ("m-4", "m-1", True)]), label="duplicates")
    assert len(decoded) == 6
