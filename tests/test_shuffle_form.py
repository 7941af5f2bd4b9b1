"""Readings cross the shuffle into the combine in a compact form that folds as the parsed one.

`ReadMetersFn` sends each reading as `shuffled_reading` makes it (value as exact
text, identity as 16 bytes, time and id only for LATEST); the combine must give
the same figures as from the parsed form, also when both forms meet in one
window, as after an in-place update with readings still in the shuffle.
"""
import random
import typing

from apache_beam import coders

from schemas import aggregation
from schemas.catalog import parse_catalog
from schemas.events import Limits, parse_payload
from schemas.values import parse_rfc3339
from tests.conftest import ALL_AGGREGATIONS
from tests.messy import dump_json
from transforms.aggregate import UsageCombineFn, ReadMetersFn

CATALOG = parse_catalog(ALL_AGGREGATIONS)
AMOUNTS = ["2", "2.50", "1E+3", "0.000000001", "99999999999999999999999999999", "7", "1000"]


def events():
    """Calls and ledger entries with equal times (LATEST ties) and re-spelled numbers."""
    rng = random.Random(7)
    docs = [{"specversion": "1.0", "id": f"e{n}", "source": f"s{n % 3}",
             "type": "ledger" if n % 4 == 0 else "call", "subject": "c",
             "time": f"2026-11-02T09:0{n % 3}:00Z",
             "data": {"region": rng.choice(["eu", "us"]), "amount": rng.choice(AMOUNTS),
                      "delta": rng.choice(["-2.5", "3", "1E+1"]), "user": f"u{n % 5}",
                      "micro": rng.choice(["-0.000000000000000000000000000000000001", "5"])}}
            for n in range(40)]
    parsed = []
    for doc in docs:
        (event,) = parse_payload(dump_json(doc).encode(), f"m{doc['id']}", (), CATALOG,
                                 Limits(now_ns=None), parse_rfc3339("2026-11-02T10:00:00Z"))
        parsed.append(event)
    return parsed


def readings_by_key():
    """(key -> [(shuffled form, parsed form)]) for every reading of every event."""
    reader, by_key = ReadMetersFn(CATALOG), {}
    for event in events():
        identity = aggregation.identity_hash(event.source, event.id)
        values = {r.meter: r.value for r in event.readings}
        for shuffled in reader.process(event):
            key, compact = shuffled.value
            parsed = (compact[0], values[key[1]], event.time_ns, event.id, identity)
            by_key.setdefault(key, []).append((compact, parsed))
    return by_key


def fold(readings):
    fn = UsageCombineFn()
    halves = [fn.create_accumulator(), fn.create_accumulator()]
    for n, reading in enumerate(readings):  # two partial accumulators, merged: a lifted combine
        halves[n % 2] = fn.add_input(halves[n % 2], reading)
    return fn.extract_output(fn.merge_accumulators(halves))


def test_every_aggregation_folds_the_compact_form_as_the_parsed_one():
    by_key = readings_by_key()
    assert {aggregation_of for (_, meter, _) in by_key
            for aggregation_of in [CATALOG.meter(meter).aggregation]} == {
        "SUM", "COUNT", "UNIQUE_COUNT", "MIN", "MAX", "LATEST"}
    for key, pairs in by_key.items():
        compact, parsed = [c for c, _ in pairs], [p for _, p in pairs]
        expected = fold(parsed)
        assert fold(compact) == expected, key
        assert fold(compact[::-1]) == expected, key
        mixed = [c if n % 2 else p for n, (c, p) in enumerate(pairs)]  # mid-update
        assert fold(mixed) == expected, key


def test_the_compact_form_is_smaller_as_beam_encodes_it():
    coder = coders.registry.get_coder(typing.Any)
    pairs = [pair for pairs in readings_by_key().values() for pair in pairs]
    compact = sum(len(coder.encode(c)) for c, _ in pairs)
    parsed = sum(len(coder.encode(p)) for _, p in pairs)
    assert compact * 2 < parsed
