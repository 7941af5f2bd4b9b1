"""Aggregation semantics as pure functions: exact, order- and partition-independent."""
import random
from decimal import Decimal

import pytest

from schemas import aggregation as agg


def fold(kind, readings):
    acc = agg.new_accumulator(kind)
    for value, time_ns, event_id, source in readings:
        agg.add_reading(acc, value, time_ns, event_id, agg.identity_hash(source, event_id))
    return acc


READINGS = [
    (Decimal("0.000000001"), 30, "b", "s"),
    (Decimal("99999999999999999999999999999"), 10, "a", "s"),
    (Decimal("2.5"), 30, "a", "s"),
    (Decimal("2.5"), 20, "c", "t"),
]


def test_each_aggregation():
    assert agg.extract(fold("SUM", READINGS))[0] == Decimal("100000000000000000000000000004.000000001")
    assert agg.extract(fold("MIN", READINGS))[0] == Decimal("0.000000001")
    assert agg.extract(fold("MAX", READINGS))[0] == Decimal("99999999999999999999999999999")
    # greatest time (30), then greatest id ("b")
    assert agg.extract(fold("LATEST", READINGS))[0] == Decimal("0.000000001")
    count = fold("COUNT", [(None, t, i, s) for _, t, i, s in READINGS])
    assert agg.extract(count)[:2] == (Decimal(4), 4)
    unique = fold("UNIQUE_COUNT", [("u1", 1, "a", "s"), ("u2", 2, "b", "s"), ("u1", 3, "c", "s")])
    assert agg.extract(unique)[:2] == (Decimal(2), 3)


def test_latest_ties_on_time_and_id_are_broken_deterministically():
    readings = [(Decimal(1), 5, "x", "source-a"), (Decimal(2), 5, "x", "source-b")]
    assert agg.extract(fold("LATEST", readings)) == agg.extract(fold("LATEST", readings[::-1]))


def test_fingerprint_depends_on_identities_only():
    identities = [(s, i) for _, _, i, s in READINGS]
    assert agg.extract(fold("SUM", READINGS))[2] == agg.fingerprint_of(identities)
    assert agg.fingerprint_of(identities[:3]) != agg.fingerprint_of(identities)
    assert agg.fingerprint_of([("ab", "c")]) != agg.fingerprint_of([("a", "bc")])


def test_any_partition_and_order_gives_the_same_result():
    rng = random.Random(7)
    for kind in ("SUM", "MIN", "MAX", "LATEST", "COUNT", "UNIQUE_COUNT"):
        readings = [(Decimal(rng.randint(0, 10 ** 12)) / 10 ** 9 if kind != "UNIQUE_COUNT"
                     else f"u{rng.randint(0, 20)}", rng.randint(0, 50), f"id{n}", "s")
                    for n in range(200)]
        expected = agg.extract(fold(kind, readings))
        for _ in range(5):
            rng.shuffle(readings)
            cuts = sorted(rng.sample(range(1, 199), 4))
            parts = [readings[a:b] for a, b in zip([0] + cuts, cuts + [200])]
            merged = agg.merge_accumulators([fold(kind, part) for part in parts])
            assert agg.extract(merged) == expected


def test_accumulate_equals_folding_one_by_one():
    rng = random.Random(11)
    for kind in ("SUM", "MIN", "MAX", "LATEST", "COUNT", "UNIQUE_COUNT"):
        readings = []
        for n in range(300):
            value = (None if kind == "COUNT" else f"u{rng.randint(0, 30)}"
                     if kind == "UNIQUE_COUNT" else str(Decimal(rng.randint(0, 10 ** 38 - 1))
                                                         / 10 ** 9))
            readings.append((value, rng.randint(0, 20), f"id{rng.randint(0, 400)}", f"s{n}"))
        folded = fold(kind, [(v if kind in ("COUNT", "UNIQUE_COUNT") else Decimal(v), t, i, s)
                             for v, t, i, s in readings])
        bulk = agg.accumulate(kind, [(v, t, i, agg.identity_hash(s, i))
                                     for v, t, i, s in readings])
        assert bulk == folded, kind


def test_accumulate_refuses_to_round():
    huge = str(10 ** 999)
    with pytest.raises(ArithmeticError):
        agg.accumulate("SUM", [(huge, 0, "a", 1), ("0.000000001", 0, "b", 2)])


@pytest.mark.parametrize("kind", ["SUM", "MIN", "MAX", "LATEST", "COUNT", "UNIQUE_COUNT"])
def test_empty_accumulators_merge_on_either_side(kind):
    """A combiner merges the accumulators it created and never fed, first or last."""
    full = agg.extract(fold(kind, READINGS))
    for accs in ([agg.new_accumulator(kind), fold(kind, READINGS)],
                 [fold(kind, READINGS), agg.new_accumulator(kind)]):
        assert agg.extract(agg.merge_accumulators(accs)) == full


def test_identity_hash_matches_its_definition_even_for_lone_surrogates():
    """JSON can spell an id no UTF-8 can hold ("\\ud800"); it is still an identity."""
    from tests.reference import fingerprint
    identities = [("//s", "a"), ("//ü", "\ud800"), ("", "")]
    assert agg.fingerprint_of(identities) == fingerprint(identities)
