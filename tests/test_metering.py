"""The batch recompute, the streaming core and `tallyflow explain` meter alike.

They are implemented apart (the recompute for throughput, explain for
evidence) on the definitions of `schemas/metering.py`. Here the same events,
with every kind of duplicate (an exact resend, a re-spelled value or time, a
copy that would bill a different amount, customer, time, window, dimension or
type), go through `ComputeUsage`, through `StreamUsage` and through explain's
classification of dropped copies. Each is checked against expectations derived
by hand (which copy is a duplicate, which a conflict) and by the independent
reference of tests/reference.py (usage values, counts and fingerprints), so
the paths agree with each other because each agrees with those.
"""
import datetime as dt
import random
from collections import Counter
from decimal import Decimal

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import trigger
from apache_beam.transforms.window import FixedWindows, GlobalWindows

from schemas.catalog import parse_catalog
from schemas.events import Limits, Payload, UsageEvent, parse_payload
from schemas.metering import (conflicts, metering_signature, signature, text_readings,
                              usage_row, value_text, window_start)
from schemas.values import format_time, parse_rfc3339
from tallyflow.reports import explain
from tests import reference
from tests.conftest import ALL_AGGREGATIONS
from transforms.aggregate import event_timestamp
from transforms.batch_usage import ComputeUsage
from transforms.streaming import StreamUsage

NS = 10 ** 9
HOUR = 3600 * NS
NOW = parse_rfc3339("2026-11-02T14:00:00Z")  # when every copy was received
CATALOG = parse_catalog(ALL_AGGREGATIONS)

# (id, source, subject, type, time, data as JSON text, its values) in position order
# f:1, f:2, ...; the JSON text spells values as a producer might. Values are given
# for the first copy of each identity only (the one both pipelines keep), None for
# its later copies.
COPIES = [
    ("a", "//test", "acme", "call", "2026-11-02T09:10:00Z",
     '{"region":"eu","amount":1,"user":"u1"}',
     {"region": "eu", "amount": Decimal(1), "user": "u1"}),
    ("a", "//test", "acme", "call", "2026-11-02T09:10:00Z",
     '{"region":"eu","amount":1,"user":"u1"}', None),                      # resend
    ("a", "//test", "acme", "call", "2026-11-02T10:10:00+01:00",
     '{"user":"u1","amount":"1.00","region":"eu"}', None),                 # re-spelled
    ("a", "//test", "acme", "call", "2026-11-02T09:10:00Z",
     '{"region":"eu","amount":2,"user":"u1"}', None),                      # other amount
    ("a", "//test", "globex", "call", "2026-11-02T09:10:00Z",
     '{"region":"eu","amount":1,"user":"u1"}', None),                      # other customer
    ("a", "//test", "acme", "call", "2026-11-02T11:10:00Z",
     '{"region":"eu","amount":1,"user":"u1"}', None),                      # other window
    ("b", "//test", "acme", "call", "2026-11-02T09:20:00Z",
     '{"region":"us","amount":1E3,"user":7}',
     {"region": "us", "amount": Decimal("1E3"), "user": 7}),
    ("b", "//test", "acme", "call", "2026-11-02T09:20:00Z",
     '{"region":"us","amount":"1000","user":"7"}', None),                  # re-spelled
    ("b", "//test", "acme", "call", "2026-11-02T09:20:00Z",
     '{"region":"eu","amount":1E3,"user":7}', None),                       # other dimension
    ("a", "//other", "acme", "call", "2026-11-02T09:30:00Z",
     '{"region":"eu","amount":5,"user":"u2"}',
     {"region": "eu", "amount": Decimal(5), "user": "u2"}),                # another identity
    ("c", "//test", "acme", "call", "2026-11-02T10:05:00Z",
     '{"region":"eu","amount":0.5,"user":"u1"}',
     {"region": "eu", "amount": Decimal("0.5"), "user": "u1"}),
    ("l", "//test", "acme", "ledger", "2026-11-02T09:40:00Z", '{"delta":-5}',
     {"delta": Decimal(-5)}),
    ("l", "//test", "acme", "ledger", "2026-11-02T09:40:00.000Z", '{"delta":"-5.000"}', None),
    ("l", "//test", "acme", "ledger", "2026-11-02T09:40:00Z", '{"delta":5}', None),
    ("x", "//test", "acme", "admin.login", "2026-11-02T09:50:00Z", '{}', {}),  # unmetered
    ("x", "//test", "acme", "admin.login", "2026-11-02T09:50:00Z", '{}', None),
    ("x", "//test", "acme", "admin.logout", "2026-11-02T09:50:00Z", '{}', None),  # other type
    ("g", "//test", "globex", "call", "2026-11-02T09:15:00Z",
     '{"region":"eu","amount":3,"user":"u9"}',
     {"region": "eu", "amount": Decimal(3), "user": "u9"}),
    ("c", "//test", "acme", "call", "2026-11-02T10:05:00Z",
     '{"amount":0.50,"user":"u1","region":"eu"}', None),                   # re-spelled
]
# Every dropped copy (position, kept copy's position, would it bill differently?),
# read off the table above.
DROPPED = [("f:2", "f:1", False), ("f:3", "f:1", False), ("f:4", "f:1", True),
           ("f:5", "f:1", True), ("f:6", "f:1", True), ("f:8", "f:7", False),
           ("f:9", "f:7", True), ("f:13", "f:12", False), ("f:14", "f:12", True),
           ("f:16", "f:15", False), ("f:17", "f:15", True), ("f:19", "f:11", False)]


def payload(copy) -> bytes:
    event_id, source, subject, event_type, time, data, _ = copy
    return (f'{{"specversion":"1.0","id":"{event_id}","source":"{source}",'
            f'"subject":"{subject}","type":"{event_type}","time":"{time}","data":{data}}}'
            ).encode()


POSITIONS = [Payload(f"f:{n}", ("f", n), payload(copy))
             for n, copy in enumerate(COPIES, start=1)]


def expected_rows() -> list[tuple]:
    """The reference's usage of the kept copies (those with generated data)."""
    kept = [{"source": source, "id": event_id, "subject": subject, "type": event_type,
             "time_ns": parse_rfc3339(time), "data": {"region": None, **data}}
            for event_id, source, subject, event_type, time, _, data in COPIES
            if data is not None]
    meters = ALL_AGGREGATIONS["meters"]
    usage = reference.expected_usage(kept, meters, HOUR)
    fingerprints = reference.expected_fingerprints(kept, meters, HOUR)
    return sorted((s, m, d, format_time(w), format_time(w + HOUR), value, count,
                   fingerprints[(s, m, d, w)]) for (s, m, d, w), (value, count) in usage.items())


def comparable(row: dict) -> tuple:
    return (row["subject"], row["meter"], row["dimensions"], row["window_start"],
            row["window_end"], Decimal(row["value"]), row["event_count"], row["fingerprint"])


def sum_counts(counters):
    total = Counter()
    for counter in counters:
        total.update(counter)
    return total


def test_the_recompute_meters_as_the_reference_and_classifies_every_copy():
    shuffled = POSITIONS[:]
    random.Random(2026).shuffle(shuffled)  # the runner's order; positions decide the winner
    batches = [shuffled[i:i + 5] for i in range(0, len(shuffled), 5)]
    with TestPipeline() as p:
        out = p | beam.Create(batches) | ComputeUsage(CATALOG, Limits(now_ns=NOW), HOUR,
                                                      shards=3)
        assert_that(out["usage"] | beam.Map(comparable), equal_to(expected_rows()))
        counts = (out["counts"] | beam.WindowInto(GlobalWindows())
                  | beam.CombineGlobally(sum_counts)
                  | beam.Map(lambda c: (c["duplicates"], c["conflicting_duplicates"])))
        assert_that(counts, equal_to([(len(DROPPED), sum(c for *_, c in DROPPED))]),
                    label="duplicates")


def test_the_stream_meters_as_the_reference_and_classifies_every_copy():
    stream = TestStream().advance_watermark_to(event_timestamp(NOW - 6 * HOUR))
    for position in POSITIONS:  # one at a time: the first to arrive is the smallest
        stream = (stream.add_elements([position._replace(ingest_ns=NOW, attributes={})],
                                      event_timestamp=event_timestamp(NOW))
                  .advance_processing_time(1))
    stream = stream.advance_watermark_to_infinity()
    with TestPipeline(options=StandardOptions(streaming=True)) as p:
        out = p | stream | StreamUsage(CATALOG, Limits(now_ns=None), HOUR, 48 * HOUR, 60,
                                       50 * HOUR)
        final = (out["usage"]
                 | "Global" >> beam.WindowInto(GlobalWindows(), trigger=trigger.AfterWatermark(),
                                             accumulation_mode=trigger.AccumulationMode.DISCARDING)
                 | "ByKey" >> beam.Map(lambda r: ((r["subject"], r["meter"], r["dimensions"],
                                                   r["window_start"]), r))
                 | "LastPane" >> beam.CombinePerKey(
                     lambda rows: max(rows, key=lambda r: r["pane_index"]))
                 | "Row" >> beam.Map(lambda kv: comparable(kv[1])))
        assert_that(final, equal_to(expected_rows()), label="usage")
        assert_that(out["duplicates"] | beam.Map(
            lambda d: (d.position, d.kept_position, d.conflict)), equal_to(DROPPED),
            label="duplicates")
        assert_that(out["too_late"], equal_to([]), label="too late")
        assert_that(out["dead_letters"], equal_to([]), label="dead letters")


def parsed(position) -> UsageEvent:
    (event,) = parse_payload(position[2], position[0], position[1], CATALOG,
                             Limits(now_ns=NOW))
    return event


def test_explain_classifies_every_dropped_copy_as_the_pipelines_do():
    received = dt.datetime.fromtimestamp(NOW // NS, dt.timezone.utc)
    copies = [{"source": e.source, "id": e.id, "event": e, "message_id": e.position,
               "ingest_time": received} for e in map(parsed, POSITIONS)]
    kept, dropped = {}, []
    for copy in copies:  # ranked by position, as the pipelines keep the first
        first = kept.setdefault((copy["source"], copy["id"]), {**copy, "copy_rank": 1})
        if first["message_id"] != copy["message_id"]:
            shown = explain._dropped({**copy, "copy_rank": 2}, first)
            dropped.append((shown["message_id"], shown["kept_message_id"], shown["conflict"]))
    assert dropped == DROPPED


def test_both_forms_of_a_signature_classify_copies_alike():
    events = [parsed(p) for p in POSITIONS]
    by_identity = {}
    for event in events:
        by_identity.setdefault(event.identity, []).append(event)
    pairs = [(a, b) for copies in by_identity.values() for a in copies for b in copies]
    assert len(pairs) > len(events)

    def as_text(e):
        return signature(e.subject, e.type, e.time_ns, text_readings(e.readings))

    for a, b in pairs:
        assert conflicts(metering_signature(a), metering_signature(b)) == \
            conflicts(as_text(a), as_text(b)), (a.position, b.position)
    flagged = {(b.position, a.position) for a, b in pairs
               if conflicts(metering_signature(b), metering_signature(a))}
    assert {(p, k) for p, k, c in DROPPED if c} <= flagged
    assert not {(p, k) for p, k, c in DROPPED if not c} & flagged


@pytest.mark.parametrize("value, text", [
    (Decimal("1E+3"), "1000"), (Decimal("1.50"), "1.5"), (Decimal("-0"), "0"),
    (Decimal("-0.000000001"), "-0.000000001"), ("u1", "u1"), ("7", "7"), (None, None)])
def test_value_text_is_canonical(value, text):
    assert value_text(value) == text


@pytest.mark.parametrize("time", ["2026-11-02T09:00:00Z", "2026-11-02T09:59:59.999999999Z",
                                  "1969-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z",
                                  "9999-12-30T23:30:00Z", "1970-01-01T00:00:00Z"])
@pytest.mark.parametrize("window_seconds", [60, 3600, 86400])
def test_window_start_is_the_window_beam_assigns(time, window_seconds):
    time_ns = parse_rfc3339(time)
    context = FixedWindows.AssignContext(event_timestamp(time_ns))
    (beams,) = FixedWindows(window_seconds).assign(context)
    start = window_start(time_ns, window_seconds * NS)
    assert start == beams.start.micros * 1000
    assert start <= time_ns < start + window_seconds * NS


def test_a_usage_row_has_the_spec_columns():
    row = usage_row(("acme", "amount", '{"region":"eu"}'), parse_rfc3339("2026-11-02T09:00:00Z"),
                    parse_rfc3339("2026-11-02T10:00:00Z"), (Decimal("12.50"), 3, "0" * 32))
    assert row == {"subject": "acme", "meter": "amount", "dimensions": '{"region":"eu"}',
                   "window_start": "2026-11-02T09:00:00Z", "window_end": "2026-11-02T10:00:00Z",
                   "value": "12.5", "event_count": 3, "fingerprint": "0" * 32}
