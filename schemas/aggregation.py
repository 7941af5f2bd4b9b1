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

Arithmetic uses `EXACT`, which raises rather than rounds.
"""
from __future__ import annotations

from decimal import Decimal, localcontext
from hashlib import blake2b
from operator import itemgetter

from schemas.values import EXACT

_FP_MOD = 1 << 128


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
    return [aggregation, 0, 0, set() if aggregation == "UNIQUE_COUNT" else None]


def add_reading(acc: list, value, time_ns: int, event_id: str, identity: int) -> list:
    """Folds one deduplicated event's reading into `acc` (in place) and returns it."""
    aggregation, _, _, state = acc
    acc[1] += 1
    acc[2] = (acc[2] + identity) % _FP_MOD
    if aggregation == "SUM":
        acc[3] = value if state is None else EXACT.add(state, value)
    elif aggregation == "UNIQUE_COUNT":
        state.add(value)
    elif aggregation == "MIN":
        acc[3] = value if state is None or value < state else state
    elif aggregation == "MAX":
        acc[3] = value if state is None or value > state else state
    elif aggregation == "LATEST":
        if state is None or (time_ns, event_id, identity) > state[:3]:
            acc[3] = (time_ns, event_id, identity, value)
    return acc


_VALUE, _IDENTITY = itemgetter(0), itemgetter(3)


def accumulate(aggregation: str, readings: list) -> list:
    """The accumulator of many readings at once, equal to folding them one by one with
    `add_reading`; a batch recompute's fast path, because the reductions run in C.

    `readings` are (value, time_ns, event_id, identity) of distinct events; values are
    canonical decimal text for numeric meters, text for UNIQUE_COUNT, None for COUNT.
    """
    fingerprint = sum(map(_IDENTITY, readings)) % _FP_MOD
    state = None
    if aggregation == "UNIQUE_COUNT":
        state = set(map(_VALUE, readings))
    elif aggregation != "COUNT":
        values = map(Decimal, map(_VALUE, readings))
        if aggregation == "SUM":
            with localcontext(EXACT):
                state = sum(values, Decimal(0))
        elif aggregation == "MIN":
            state = min(values)
        elif aggregation == "MAX":
            state = max(values)
        else:
            value, time_ns, event_id, identity = max(
                readings, key=lambda r: (r[1], r[2], r[3]))
            state = (time_ns, event_id, identity, Decimal(value))
    return [aggregation, len(readings), fingerprint, state]


def merge_accumulators(accs) -> list:
    """Merges accumulators of one aggregation into the first (in place)."""
    accs = iter(accs)
    merged = next(accs)
    aggregation = merged[0]
    for acc in accs:
        merged[1] += acc[1]
        merged[2] = (merged[2] + acc[2]) % _FP_MOD
        a, b = merged[3], acc[3]
        if b is None:
            continue
        if a is None:
            merged[3] = b
        elif aggregation == "SUM":
            merged[3] = EXACT.add(a, b)
        elif aggregation == "UNIQUE_COUNT":
            a |= b
        elif aggregation == "MIN":
            merged[3] = min(a, b)
        elif aggregation == "MAX":
            merged[3] = max(a, b)
        elif aggregation == "LATEST":
            merged[3] = b if b[:3] > a[:3] else a
    return merged


def extract(acc: list) -> tuple[Decimal, int, str]:
    """(value, event_count, fingerprint) of an accumulator."""
    aggregation, count, fingerprint, state = acc
    if aggregation == "COUNT":
        value = Decimal(count)
    elif aggregation == "UNIQUE_COUNT":
        value = Decimal(len(state))
    elif aggregation == "LATEST":
        value = state[3]
    else:
        value = state
    return value, count, format_fingerprint(fingerprint)
