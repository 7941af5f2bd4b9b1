"""Exact aggregation semantics (SPEC §2), as pure functions over accumulators.

An accumulator is a small list `[aggregation, event_count, fingerprint, state]`
(the aggregation travels with it because a combiner never sees the key), mutable so
a combiner can fold millions of readings without allocating per reading:

- SUM: Decimal total; MIN/MAX: Decimal or None; COUNT: None (the value is the
  event count); UNIQUE_COUNT: the exact set of distinct values (no sketch);
  LATEST: (time_ns, id, identity hash, value) of the greatest time, ties by
  greatest id (then by identity hash, for equal ids from different sources).
- fingerprint: the sum modulo 2**128 of a 128-bit BLAKE2b hash of each
  (source, id). Sums commute, so the fingerprint of a window is the same in
  whatever order or partition its events were folded, and a missing or extra
  event changes it.

Each aggregation is a row of small functions (fold one reading, reduce many,
merge two states, the value of a state), looked up by its `Aggregation`. An
accumulator holds the aggregation as plain text (as `MeterReadings` passes it):
accumulators live in a streaming job's state across `--update`s, and plain text
pickles no class path that could move.

Arithmetic uses `EXACT`, which raises rather than rounds.
"""
from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from functools import reduce
from hashlib import blake2b
from operator import ior, itemgetter

from schemas.values import EXACT

_FP_MOD = 1 << 128
_ZERO = Decimal(0)


class Aggregation(StrEnum):
    """The aggregations a meter may declare; each member is its name as text, so it
    compares, hashes, prints and serialises exactly as the catalog spells it."""

    SUM = "SUM"
    COUNT = "COUNT"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    MIN = "MIN"
    MAX = "MAX"
    LATEST = "LATEST"

    @property
    def numeric(self) -> bool:
        """Whether its readings are numbers (COUNT reads none, UNIQUE_COUNT text)."""
        return self not in (Aggregation.COUNT, Aggregation.UNIQUE_COUNT)


def identity_hash(source: str, event_id: str) -> int:
    """128-bit hash of an event identity; NUL cannot occur in JSON-decoded ids unescaped,
    and the length prefix makes the encoding unambiguous anyway."""
    key = f"{len(source)}:{source}\x00{event_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(key, digest_size=16).digest(), "big")


def format_fingerprint(fingerprint: int) -> str:
    return f"{fingerprint:032x}"


def fingerprint_of(identities) -> str:
    """Fingerprint of (source, id) pairs, as an aggregation row carries it."""
    return format_fingerprint(sum(identity_hash(s, i) for s, i in identities) % _FP_MOD)


def new_accumulator(aggregation: str) -> list:
    return [aggregation, 0, 0, set() if aggregation == Aggregation.UNIQUE_COUNT else None]


def _fold_sum(state, value, *_):
    return value if state is None else EXACT.add(state, value)


def _fold_count(state, *_):
    return state  # None: the value is the event count


def _add_unique(state: set, value, *_) -> set:
    state.add(value)
    return state


def _fold_min(state, value, *_):
    return value if state is None or value < state else state


def _fold_max(state, value, *_):
    return value if state is None or value > state else state


def _latest(state, value, time_ns: int, event_id: str, identity: int):
    return (time_ns, event_id, identity, value) if (
        state is None or (time_ns, event_id, identity) > state[:3]) else state


# state, value, time_ns, event_id, identity -> the state with one more reading. The
# entries of this table and the others are named functions, not lambdas: a mutation
# run (benchmarks/mutation.py) only mutates code inside functions.
_FOLD = {
    Aggregation.SUM: _fold_sum,
    Aggregation.COUNT: _fold_count,
    Aggregation.UNIQUE_COUNT: _add_unique,
    Aggregation.MIN: _fold_min,
    Aggregation.MAX: _fold_max,
    Aggregation.LATEST: _latest,
}


def add_reading(acc: list, value, time_ns: int, event_id: str, identity: int) -> list:
    """Folds one deduplicated event's reading into `acc` (in place) and returns it."""
    acc[1] += 1
    acc[2] = (acc[2] + identity) % _FP_MOD
    acc[3] = _FOLD[acc[0]](acc[3], value, time_ns, event_id, identity)
    return acc


_VALUE_OF, _IDENTITY = itemgetter(0), itemgetter(3)


def _numbers(readings):
    return map(Decimal, map(_VALUE_OF, readings))


def _total(readings) -> Decimal:
    """Adds in `EXACT` as `sum` would under it, without entering a context per key
    (a recompute reduces about one key per event at high cardinality)."""
    return reduce(EXACT.add, _numbers(readings), _ZERO)


def _no_state(readings) -> None:
    return None


def _distinct(readings) -> set:
    return set(map(_VALUE_OF, readings))


def _least(readings) -> Decimal:
    return min(_numbers(readings))


def _greatest(readings) -> Decimal:
    return max(_numbers(readings))


def _latest_of(readings) -> tuple:
    value, time_ns, event_id, identity = max(readings, key=lambda r: (r[1], r[2], r[3]))
    return (time_ns, event_id, identity, Decimal(value))


# readings (value text, time_ns, event_id, identity) -> the state folding them gives
_REDUCE = {
    Aggregation.SUM: _total,
    Aggregation.COUNT: _no_state,
    Aggregation.UNIQUE_COUNT: _distinct,
    Aggregation.MIN: _least,
    Aggregation.MAX: _greatest,
    Aggregation.LATEST: _latest_of,
}


def accumulate(aggregation: str, readings: list) -> list:
    """The accumulator of many readings at once, equal to folding them one by one with
    `add_reading`; a batch recompute's fast path, because the reductions run in C.

    `readings` are (value, time_ns, event_id, identity) of distinct events; values are
    canonical decimal text for numeric meters, text for UNIQUE_COUNT, None for COUNT.
    """
    fingerprint = sum(map(_IDENTITY, readings)) % _FP_MOD
    return [aggregation, len(readings), fingerprint, _REDUCE[aggregation](readings)]


def _later(a: tuple, b: tuple) -> tuple:
    return b if b[:3] > a[:3] else a


# two states, neither None -> their merge (UNIQUE_COUNT's into the first, in place)
_MERGE = {
    Aggregation.SUM: EXACT.add,
    Aggregation.UNIQUE_COUNT: ior,
    Aggregation.MIN: min,
    Aggregation.MAX: max,
    Aggregation.LATEST: _later,
}


def merge_accumulators(accs) -> list:
    """Merges accumulators of one aggregation into the first (in place)."""
    accs = iter(accs)
    merged = next(accs)
    merge = _MERGE.get(merged[0])
    for acc in accs:
        merged[1] += acc[1]
        merged[2] = (merged[2] + acc[2]) % _FP_MOD
        a, b = merged[3], acc[3]
        if b is not None:
            merged[3] = b if a is None else merge(a, b)
    return merged


def _the_state(state, _) -> Decimal:
    return state


def _count_of(_, count: int) -> Decimal:
    return Decimal(count)


def _distinct_count(state: set, _) -> Decimal:
    return Decimal(len(state))


def _latest_value(state: tuple, _) -> Decimal:
    return state[3]


# state, event count -> the aggregation's value
_VALUE = {
    Aggregation.SUM: _the_state,
    Aggregation.COUNT: _count_of,
    Aggregation.UNIQUE_COUNT: _distinct_count,
    Aggregation.MIN: _the_state,
    Aggregation.MAX: _the_state,
    Aggregation.LATEST: _latest_value,
}


def extract(acc: list) -> tuple[Decimal, int, str]:
    """(value, event_count, fingerprint) of an accumulator."""
    aggregation, count, fingerprint, state = acc
    return _VALUE[aggregation](state, count), count, format_fingerprint(fingerprint)
