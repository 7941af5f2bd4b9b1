"""The recompute's steps (transforms/batch_usage.py) called directly, without a pipeline:
which copy of an identity is kept and what is counted, the window and period of each
reading, partial accumulators meeting in one usage shard, and usage rows (one list per
usage shard) whose fingerprint is computed from its definition (tests/reference.py)."""
import pickle
import zlib
from collections import Counter

from apache_beam import pvalue

from schemas.events import Limits, Payload
from schemas.metering import signature
from schemas.values import parse_rfc3339
from tests.conftest import event, line
from tests.reference import fingerprint
from transforms import batch_usage

HOUR = 3600 * 10 ** 9
T0 = parse_rfc3339("2026-11-02T09:00:00Z")
EU = '{"region":"eu"}'


def record(source, event_id, order, time_ns=T0, subject="acme", readings=None):
    """A record as `_ParseBatch` makes them: (source, id, order, metering signature)."""
    return (source, event_id, order, signature(
        subject, "call", time_ns, (("amount", EU, "1"),) if readings is None else readings))


def split(outputs) -> tuple[list, dict]:
    main, tagged = [], {}
    for output in outputs:
        if isinstance(output, pvalue.TaggedOutput):
            tagged.setdefault(output.tag, []).append(output.value)
        else:
            main.append(output)
    return main, tagged


def test_the_first_copy_by_order_is_kept_and_the_others_counted():
    counts = Counter()
    batches = [[record("//s", "a", (2,)), record("//s", "b", (1,)), record("//t", "a", (6,))],
               [record("//s", "a", (1,), subject="beta"), record("//t", "a", (5,)),
                record("//s", "a", (3,), subject="beta")],
               [record("//t", "a", (7,), readings=amount("2"))]]
    kept = batch_usage._first_copies([pickle.dumps(b) for b in batches], counts)
    assert sorted(kept) == sorted([record("//s", "a", (1,), subject="beta"),
                                   record("//s", "b", (1,)), record("//t", "a", (5,))])
    # (//s, a) has two later copies, the one for acme billing differently; (//t, a) two,
    # one with another value
    assert counts == Counter(accepted=3, duplicates=4, conflicting_duplicates=2)


def amount(value: str) -> tuple:
    return (("amount", EU, value),)


def test_readings_are_windowed_in_the_period_and_partials_merge_into_exact_rows(catalog):
    start, end = T0, T0 + 2 * HOUR
    aggregate = batch_usage._DeduplicateAndAggregate(catalog, HOUR, start, end, shards=2)
    shard_a = [record("//s", "a", (1,), T0, readings=amount("1.5")),   # the period's start
               record("//s", "e", (6,), T0 + 5, readings=()),  # meters nothing
               record("//s", "g", (8,), T0 + 6, readings=()),
               record("//s", "h", (9,), T0 + 20, readings=amount("0.5")),
               record("//t", "a", (3,), T0 + HOUR, readings=amount("4")),  # the 2nd window
               record("//s", "c", (4,), end, readings=amount("100")),  # the end: outside
               record("//s", "d", (5,), T0 - 1, readings=amount("100"))]  # before: outside
    shard_b = [record("//s", "b", (2,), T0 + HOUR - 1, readings=amount("2")),  # last ns of 1st
               record("//s", "f", (7,), T0 + 10, subject="beta", readings=amount("0.25"))]
    partials, counts = [], Counter()
    for identity_shard, records in enumerate((shard_a, shard_b)):
        main, tagged = split(aggregate.process((identity_shard, [pickle.dumps(records)])))
        partials += main
        for counter in tagged[batch_usage.COUNTS]:
            counts.update(counter)
    assert counts == Counter(accepted=9, outside_period=2, unmetered=2)
    shards_of_key: dict[tuple, set] = {}
    for usage_shard, blob in partials:
        assert usage_shard in (0, 1)
        for key in pickle.loads(blob):
            shards_of_key.setdefault(key, set()).add(usage_shard)
    assert all(len(shards) == 1 for shards in shards_of_key.values())  # partials meet
    assert len(shards_of_key) == 3

    (rows,), tagged = split(batch_usage._MergeUsage(HOUR).process((0, [b for _, b in partials])))
    assert tagged[batch_usage.COUNTS] == [Counter(usage_rows=3)]
    assert sorted(rows, key=lambda r: (r["subject"], r["window_start"])) == [
        {"subject": "acme", "meter": "amount", "dimensions": EU,
         "window_start": "2026-11-02T09:00:00Z", "window_end": "2026-11-02T10:00:00Z",
         "value": "4", "event_count": 3,
         "fingerprint": fingerprint([("//s", "a"), ("//s", "h"), ("//s", "b")])},
        {"subject": "acme", "meter": "amount", "dimensions": EU,
         "window_start": "2026-11-02T10:00:00Z", "window_end": "2026-11-02T11:00:00Z",
         "value": "4", "event_count": 1, "fingerprint": fingerprint([("//t", "a")])},
        {"subject": "beta", "meter": "amount", "dimensions": EU,
         "window_start": "2026-11-02T09:00:00Z", "window_end": "2026-11-02T10:00:00Z",
         "value": "0.25", "event_count": 1, "fingerprint": fingerprint([("//s", "f")])},
    ]


def call(event_id, amount, **extra) -> bytes:
    return line(event(id=event_id, data={"region": "eu", "amount": amount, "user": "u"},
                      **extra))


INGEST = T0 + 60 * 10 ** 9
BATCH = [Payload(*item) for item in [
         ("f:1", ("f", 1), call("a", "1E3")),
         ("f:2", ("f", 2), b"{bad"),
         ("f:3", ("f", 3), b"[" + b",".join([call("b", "2.50"), call("n", "-1"),
                                             call("d", "3")]) + b"]"),
         ("f:4", ("f", 4), b"{worse"),
         ("m-9", (INGEST // 1000, "m-9"), call("c", "4"), INGEST, {}),
         # 30 minutes after it was ingested: in the future then, whatever the time now
         ("m-10", (INGEST // 1000, "m-10"), b"[" + call("f", "5", time="2026-11-02T09:30:00Z")
          + b"]", INGEST, {}),
         ("m-11", (INGEST // 1000, "m-11"), call("g", "5", time="2026-11-02T09:30:00Z"),
          INGEST, {})]]


def parsed_batch(parse) -> tuple[list, list, Counter]:
    """(records sorted by id, rejection codes, counts) of BATCH, records by shard checked."""
    main, tagged = split(parse.process(BATCH))
    by_shard = {shard: pickle.loads(blob) for shard, blob in main}
    assert len(by_shard) == len(main)  # one element per shard per batch
    for shard, records in by_shard.items():  # by id alone, so every copy of it meets
        assert all(zlib.crc32(r[1].encode()) % 3 == shard for r in records)
    (counts,) = tagged[batch_usage.COUNTS]
    return (sorted(r for records in by_shard.values() for r in records),
            sorted(r.error_code for r in tagged[batch_usage.DEAD_LETTERS]), counts)


def test_a_batch_is_parsed_into_records_by_identity_shard_and_counted(catalog, monkeypatch):
    parse = batch_usage._ParseBatch(catalog, Limits(now_ns=T0 + HOUR), shards=3)
    parse.setup()
    records, rejected, counts = parsed_batch(parse)
    assert rejected == ["FUTURE_TIME", "FUTURE_TIME", "MALFORMED_JSON", "MALFORMED_JSON",
                        "VALUE_NEGATIVE"]
    assert counts == Counter({"lines": 7, "records": 9, "dead_lettered": 5,
                              "dead_lettered_by_code/MALFORMED_JSON": 2,
                              "dead_lettered_by_code/VALUE_NEGATIVE": 1,
                              "dead_lettered_by_code/FUTURE_TIME": 2})
    assert [(r[1], r[2]) for r in records] == [
        ("a", ("f", 1)), ("b", ("f", 3, 0)), ("c", (INGEST // 1000, "m-9")), ("d", ("f", 3, 2))]
    # values as canonical text: 1E3 is 1000, 2.50 is 2.5
    assert [dict((m, v) for m, _, v in r[3][3])["amount"] for r in records] == \
        ["1000", "2.5", "4", "3"]
    assert {r[:2] + r[3][:3] for r in records} == {
        ("//test", i, "acme", "call", T0) for i in "abcd"}

    def broken(*args):
        raise RuntimeError("a fast-path bug")
    monkeypatch.setattr(parse._fast, "accept", broken)  # the full validator decides alike
    assert parsed_batch(parse) == (records, rejected, counts)


def test_a_binary_mode_message_is_judged_by_its_attributes_even_if_its_data_looks_structured(
        catalog):
    """The fast path reads structured events only: a binary-mode message whose data is
    itself a well-formed structured event is still the event its ce- attributes make."""
    inner = event(id="inner", source="//inner", subject="beta",
                  data={"region": "eu", "amount": "3", "user": "u"})
    data = line({**inner, "region": "eu", "amount": "7", "user": "u"})
    attributes = {"ce-specversion": "1.0", "ce-id": "b1", "ce-source": "//s", "ce-type": "call",
                  "ce-subject": "acme", "ce-time": "2026-11-02T09:00:00Z",
                  "content-type": "application/json"}
    parse = batch_usage._ParseBatch(catalog, Limits(now_ns=T0 + HOUR), shards=1)
    parse.setup()
    assert parse._fast.accept(data, T0 + HOUR) is not None  # structured, it would be "inner"
    (shard,), tagged = split(parse.process([Payload("m-1", ("m", 1), data, T0, attributes)]))
    (record,) = pickle.loads(shard[1])
    # the message's data is the event's data: its top-level amount, not the inner one's
    assert (record[:2], record[3][0], dict((m, v) for m, _, v in record[3][3])["amount"]) == \
        (("//s", "b1"), "acme", "7")
    assert tagged[batch_usage.COUNTS] == [Counter(lines=1, records=1)]
