"""Property test: the recompute's ComputeUsage equals the independent reference on random input.

Random events with duplicates (exact and conflicting), every aggregation,
NUMERIC and BIGNUMERIC meters, signed values where a meter allows them, tiny
and huge decimals, values as numbers or strings, times in any offset and
often equal (LATEST ties, decided by id and then identity hash), equal ids
from different sources, shuffled: value, event count and fingerprint of every
row must equal the reference's (`tests/reference.py`).
"""
import random
from decimal import Decimal

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from schemas.catalog import parse_catalog
from schemas.events import Limits, Payload
from schemas.values import format_time, parse_rfc3339
from tests.conftest import ALL_AGGREGATIONS
from tests.messy import dump_json, spell_time
from tests.reference import expected_fingerprints, expected_usage
from transforms.batch_usage import ComputeUsage

T0 = parse_rfc3339("2026-11-02T08:00:00Z")
HOUR = 3600 * 10 ** 9

# Every kind of meter: ALL_AGGREGATIONS (each aggregation, NUMERIC; `balance` on
# `ledger` events allows negatives) and BIGNUMERIC meters, signed, on `call` events.
METERS = ALL_AGGREGATIONS["meters"] + [
    {"key": "micro_sum", "event_type": "call", "aggregation": "SUM", "value_property": "$.micro",
     "precision": "BIGNUMERIC", "allow_negative": True, "group_by": {"region": "$.region"}},
    {"key": "micro_max", "event_type": "call", "aggregation": "MAX", "value_property": "$.micro",
     "precision": "BIGNUMERIC", "allow_negative": True},
    {"key": "micro_last", "event_type": "call", "aggregation": "LATEST",
     "value_property": "$.micro", "precision": "BIGNUMERIC", "allow_negative": True},
]
CATALOG = parse_catalog({"meters": METERS})

unsigned = st.one_of(
    st.integers(0, 10 ** 9).map(lambda n: Decimal(n).scaleb(-9)),
    st.integers(0, 10 ** 27).map(Decimal),
    st.integers(0, 1000).map(Decimal),
)
signed = st.builds(lambda n, negative: -n if negative else n, unsigned, st.booleans())
# BIGNUMERIC only: 38 fraction digits, or 36 integer digits (NUMERIC has 9 and 29)
bignumeric = st.builds(lambda n, negative: -n if negative else n, st.one_of(
    st.integers(0, 10 ** 38).map(lambda n: Decimal(n).scaleb(-38)),
    st.integers(0, 10 ** 36).map(Decimal),
    st.integers(0, 10).map(Decimal)), st.booleans())

events = st.fixed_dictionaries({
    "id": st.integers(0, 25).map(lambda n: f"id-{n}"),
    "source": st.sampled_from(["//a", "//b"]),
    "subject": st.sampled_from(["acme", "globex"]),
    "type": st.sampled_from(["call", "call", "ledger"]),
    # a few instants, often shared: LATEST ties on time (and id), window edges
    "time_ns": st.one_of(st.integers(0, 3 * HOUR),
                         st.sampled_from([0, 1, HOUR - 1, HOUR, 2 * HOUR + 7])).map(
        lambda n: T0 + n),
    "amount": unsigned,
    "micro": bignumeric,
    "delta": signed,
    "user": st.sampled_from(["u1", "u2", "u3", 7]),
    "region": st.sampled_from(["eu", "us", None]),
    "as_string": st.booleans(),
    "offset_seed": st.integers(0, 1000),
})


def data(ev) -> dict:
    """The event's data with the generated Decimals, as the reference reads them."""
    if ev["type"] == "ledger":
        return {"delta": ev["delta"]}
    out = {"amount": ev["amount"], "micro": ev["micro"], "user": ev["user"]}
    if ev["region"] is not None:
        out["region"] = ev["region"]
    return out


def payload(ev) -> bytes:
    spelled = {k: str(v) if ev["as_string"] and isinstance(v, Decimal) else v
               for k, v in data(ev).items()}
    time = spell_time(random.Random(ev["offset_seed"]), ev["time_ns"])
    return dump_json({"specversion": "1.0", "id": ev["id"], "source": ev["source"],
                      "type": ev["type"], "subject": ev["subject"], "time": time,
                      "data": spelled}).encode()


def reference_rows(generated):
    first = {}
    for ev in generated:  # the first copy by position wins
        first.setdefault((ev["source"], ev["id"]), ev)
    accepted = [{"source": e["source"], "id": e["id"], "subject": e["subject"],
                 "type": e["type"], "time_ns": e["time_ns"],
                 "data": {"region": None, **data(e)}} for e in first.values()]
    expected = expected_usage(accepted, METERS, HOUR)
    fingerprints = expected_fingerprints(accepted, METERS, HOUR)
    return [(s, m, d, format_time(w), v, c, fingerprints[(s, m, d, w)])
            for (s, m, d, w), (v, c) in expected.items()]


@seed(20261102)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_aggregation_matches_reference(generated, rnd):
    lines = [Payload(f"f:{n}", ("f", n), payload(ev)) for n, ev in enumerate(generated)]
    rnd.shuffle(lines)  # the runner sees them in any order; positions decide the winner
    batches = [lines[i:i + 7] for i in range(0, len(lines), 7)]
    with TestPipeline() as p:
        out = p | beam.Create(batches) | ComputeUsage(
            CATALOG, Limits(now_ns=T0 + 10 * HOUR), HOUR, shards=4)
        got = out["usage"] | beam.Map(lambda r: (r["subject"], r["meter"], r["dimensions"],
                                         r["window_start"], Decimal(r["value"]),
                                         r["event_count"], r["fingerprint"]))
        assert_that(got, equal_to(reference_rows(generated)))
        assert_that(out["dead_letters"], equal_to([]), label="no rejections")
