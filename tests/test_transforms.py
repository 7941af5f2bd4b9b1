"""Each composite transform alone, with TestPipeline and assert_that."""
from collections import Counter

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, TimestampedValue
from apache_beam.options.pipeline_options import StandardOptions

from schemas.aggregation import fingerprint_of
from schemas.events import Limits, Payload, parse_payload
from schemas.values import parse_rfc3339
from transforms.aggregate import AggregateUsage, MeterReadings, event_timestamp
from transforms.batch_usage import ComputeUsage
from transforms.dedup import DeduplicateEvents, same_position
from transforms.parse import ParseEvents
from tests.conftest import event, line

LIMITS = Limits(now_ns=parse_rfc3339("2026-11-21T00:00:00Z"))


def parsed(catalog, *docs, positions=None):
    """UsageEvents parsed from `docs`, positioned as lines 1..n of file f."""
    out = []
    for n, doc in enumerate(docs, start=1):
        position = positions[n - 1] if positions else n
        out += parse_payload(line(doc), f"f:{position}", ("f", position), catalog, LIMITS)
    return out


def call(id, amount, time="2026-11-02T09:10:00Z", subject="acme", region="eu", user="u1",
         source="//test"):
    return event(id=id, source=source, subject=subject, time=time,
                 data={"region": region, "amount": amount, "user": user})


def test_parse_events_routes_every_payload(catalog):
    payloads = [Payload("f:1", ("f", 1), line(call("a", "1"))),
                Payload("f:2", ("f", 2), b"{broken"),
                Payload("f:3", ("f", 3),
                        b"[" + line(call("b", "2")) + b"," + line(call("c", "-1")) + b"]")]
    with TestPipeline() as p:
        out = p | beam.Create(payloads) | ParseEvents(catalog, LIMITS)
        assert_that(out.events | "ids" >> beam.Map(lambda e: (e.id, e.position)),
                    equal_to([("a", "f:1"), ("b", "f:3#0")]), label="events")
        assert_that(out.dead_letters | "codes" >> beam.Map(lambda r: (r.position, r.error_code)),
                    equal_to([("f:2", "MALFORMED_JSON"), ("f:3#1", "VALUE_NEGATIVE")]),
                    label="dead")


def test_compute_usage_keeps_the_first_copy_and_counts_conflicts(catalog):
    docs = [call("a", "1"), call("b", "5"), call("a", "1"), call("a", "999"),
            call("a", "1", source="//other"), event(id="x", type="admin.login"),
            call("c", "2", time="2026-11-02T12:00:00Z")]
    payloads = [Payload(f"f:{n}", ("f", n), line(doc)) for n, doc in enumerate(docs, start=1)]
    batches = [[payloads[3], payloads[0]], [payloads[4], payloads[2], payloads[1]],
               [payloads[5], payloads[6], Payload("f:8", ("f", 8), b"{bad")]]
    start, end = parse_rfc3339("2026-11-02T09:00:00Z"), parse_rfc3339("2026-11-02T10:00:00Z")
    with TestPipeline() as p:
        out = p | beam.Create(batches) | ComputeUsage(catalog, LIMITS, 3600 * 10 ** 9,
                                                      start, end, shards=3)
        amounts = out["usage"] | beam.Filter(lambda r: r["meter"] == "amount") | beam.Map(
            lambda r: (r["value"], r["event_count"]))
        # a (first copy: 1) + b (5) + the other source's a (1); c is outside the period
        assert_that(amounts, equal_to([("7", 3)]), label="amount")
        totals = (out["counts"] | beam.WindowInto(beam.transforms.window.GlobalWindows())
                  | beam.CombineGlobally(sum_counts))
        assert_that(totals, equal_to([Counter({
            "lines": 8, "records": 8, "accepted": 5, "duplicates": 2,
            "conflicting_duplicates": 1, "dead_lettered": 1,
            "dead_lettered_by_code/MALFORMED_JSON": 1, "unmetered": 1, "outside_period": 1,
            "usage_rows": 6})]), label="counts")


def test_compute_usage_in_blocks_gives_a_list_per_usage_shard(catalog):
    docs = [call("a", "1"), call("b", "2", subject="beta"), call("c", "3", region="us"),
            call("d", "4")]
    batches = [[Payload(f"f:{n}", ("f", n), line(doc)) for n, doc in enumerate(docs, start=1)]]

    def blocks_of_rows(blocks):
        # at most one list per usage shard; every row in exactly one of them
        assert 1 <= len(blocks) <= 2 and all(isinstance(block, list) for block in blocks)
        rows = sorted((r["subject"], r["meter"], r["dimensions"], r["value"])
                      for block in blocks for r in block if r["meter"] in ("amount", "calls"))
        assert rows == [("acme", "amount", '{"region":"eu"}', "5"),
                        ("acme", "amount", '{"region":"us"}', "3"),
                        ("acme", "calls", '{"region":"eu"}', "2"),
                        ("acme", "calls", '{"region":"us"}', "1"),
                        ("beta", "amount", '{"region":"eu"}', "2"),
                        ("beta", "calls", '{"region":"eu"}', "1")]

    with TestPipeline() as p:
        out = p | beam.Create(batches) | ComputeUsage(catalog, LIMITS, 3600 * 10 ** 9,
                                                      shards=2, blocks=True)
        assert_that(out["usage"], blocks_of_rows)


def sum_counts(counters):
    total = Counter()
    for counter in counters:
        total.update(counter)
    return total


def test_streaming_dedup_across_panes_with_test_stream(catalog):
    first, again, conflict, other = parsed(catalog, call("a", "1"), call("a", "1"),
                                           call("a", "7"), call("b", "2"))
    t0 = event_timestamp(parse_rfc3339("2026-11-02T09:10:00Z"))
    stream = (TestStream()
              .advance_watermark_to(t0)
              .add_elements([TimestampedValue(first, t0), TimestampedValue(other, t0)])
              .advance_processing_time(60)
              .add_elements([TimestampedValue(again, t0)])
              .advance_watermark_to(t0 + 3600)
              .add_elements([TimestampedValue(conflict, t0)])
              .advance_watermark_to_infinity())
    options = StandardOptions(streaming=True)
    with TestPipeline(options=options) as p:
        out = p | stream | DeduplicateEvents(horizon_seconds=86400)
        assert_that(out.unique | "kept" >> beam.Map(lambda e: (e.id, e.position)),
                    equal_to([("a", "f:1"), ("b", "f:4")]), label="unique")
        assert_that(out.duplicates | "dups" >> beam.Map(
            lambda d: (d.source, d.id, d.position, d.kept_position, d.conflict)),
            equal_to([("//test", "a", "f:2", "f:1", False), ("//test", "a", "f:3", "f:1", True)]),
            label="duplicates")


def test_streaming_dedup_forgets_identities_after_the_horizon(catalog):
    first, again = parsed(catalog, call("a", "1"), call("a", "1"))
    t0 = event_timestamp(parse_rfc3339("2026-11-02T09:10:00Z"))
    stream = (TestStream()
              .add_elements([TimestampedValue(first, t0)])
              .advance_watermark_to(t0 + 7200)
              .add_elements([TimestampedValue(again, t0 + 7200)])
              .advance_watermark_to_infinity())
    with TestPipeline(options=StandardOptions(streaming=True)) as p:
        out = p | stream | DeduplicateEvents(horizon_seconds=3600)
        assert_that(out.unique | beam.Map(lambda e: e.position), equal_to(["f:1", "f:2"]))


def test_meter_readings_feed_every_meter_and_count_unmetered(catalog):
    events = parsed(catalog, call("a", "2"), event(id="x", type="admin.login"))
    with TestPipeline() as p:
        out = p | beam.Create(events) | MeterReadings(catalog)
        assert_that(out.readings | "meters" >> beam.Map(lambda kv: kv[0][1]),
                    equal_to(["calls", "amount", "users", "low", "high", "last"]),
                    label="readings")
        assert_that(out.unmetered | "ids" >> beam.Map(lambda e: e.id), equal_to(["x"]),
                    label="unmetered")


def test_aggregate_usage_per_key_and_window(catalog):
    events = parsed(catalog,
                    call("a", "0.000000001", time="2026-11-02T09:00:00Z"),
                    call("b", "99999999999999999999999999999", time="2026-11-02T10:59:59+01:00"),
                    call("c", "3", time="2026-11-02T09:30:00Z", user="u2"),
                    call("d", "4", time="2026-11-02T10:00:00Z"),
                    call("e", "5", time="2026-11-02T09:30:00Z", region="us"))
    with TestPipeline() as p:
        rows = p | beam.Create(events) | MeterReadings(catalog)
        usage = (rows.readings | beam.WindowInto(FixedWindows(3600)) | AggregateUsage())
        got = usage | beam.Map(lambda r: (r["meter"], r["dimensions"], r["window_start"],
                                          r["value"], r["event_count"]))
        assert_that(got, equal_to([
            ("amount", '{"region":"eu"}', "2026-11-02T09:00:00Z",
             "100000000000000000000000000002.000000001", 3),
            ("amount", '{"region":"us"}', "2026-11-02T09:00:00Z", "5", 1),
            ("amount", '{"region":"eu"}', "2026-11-02T10:00:00Z", "4", 1),
            ("calls", '{"region":"eu"}', "2026-11-02T09:00:00Z", "3", 3),
            ("calls", '{"region":"us"}', "2026-11-02T09:00:00Z", "1", 1),
            ("calls", '{"region":"eu"}', "2026-11-02T10:00:00Z", "1", 1),
            ("users", "{}", "2026-11-02T09:00:00Z", "2", 4),
            ("users", "{}", "2026-11-02T10:00:00Z", "1", 1),
            ("low", "{}", "2026-11-02T09:00:00Z", "0.000000001", 4),
            ("low", "{}", "2026-11-02T10:00:00Z", "4", 1),
            ("high", "{}", "2026-11-02T09:00:00Z", "99999999999999999999999999999", 4),
            ("high", "{}", "2026-11-02T10:00:00Z", "4", 1),
            # b at 09:59:59Z is the latest of the 09:00 window
            ("last", "{}", "2026-11-02T09:00:00Z", "99999999999999999999999999999", 4),
            ("last", "{}", "2026-11-02T10:00:00Z", "4", 1),
        ]))
        fingerprints = usage | "fp" >> beam.Filter(
            lambda r: r["meter"] == "calls" and r["window_start"] == "2026-11-02T10:00:00Z"
        ) | beam.Map(lambda r: r["fingerprint"])
        assert_that(fingerprints, equal_to([fingerprint_of([("//test", "d")])]), label="fp")


def test_copies_are_one_position_only_for_one_message_and_element_replayed_or_not():
    """A restored job's replay (`replay:` positions) of what it had already seen is not a
    duplicate; copies from elements of no known message cannot be told to be one."""
    assert same_position("m-1#0", "m-1#0") and same_position("replay:m-1#0", "m-1#0")
    assert same_position("m-1#0", "replay:m-1#0")
    assert not same_position("m-1#0", "m-1#1") and not same_position("m-1#0", "m-2#0")
    assert not same_position("#0", "#0")
