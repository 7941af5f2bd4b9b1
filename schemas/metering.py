"""What decides a bill, defined once for every path that meters events.

Three paths meter the same events: the streaming transforms (deduplicate,
read meters, window, aggregate), the batch recompute (`ComputeUsage` and its
fast path, built for throughput) and `tallyflow explain` (which re-folds a
row's events as evidence). They are implemented apart, for speed or for
evidence, but they must agree on every bill, so these definitions are theirs
in common:

- `window_start`: the fixed, UTC-aligned window an event time falls in;
- `value_text`: a reading's value as canonical text (the recompute carries
  values so, and explain shows them so; re-spelled copies like 1E3 and 1000
  are equal);
- `signature` / `metering_signature`: what a copy of an event bills; two
  copies of one identity are a conflicting duplicate when `conflicts` says
  their signatures differ; `signature_digest` is a fixed-size stand-in for a
  parsed signature that compares as it does (the stream keeps it in state);
- `usage_row`: a usage row's SPEC §4 columns from an aggregation's figures.

The aggregation itself and the fingerprint are `schemas.aggregation`'s, used
by all three paths alike.
"""
from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from functools import lru_cache

from schemas.events import UsageEvent
from schemas.values import format_decimal, format_time


def window_start(time_ns: int, window_ns: int) -> int:
    """The start of the window holding `time_ns`: windows are `window_ns` long and start
    at multiples of it since the epoch (as Beam's FixedWindows without offset)."""
    return time_ns - time_ns % window_ns


def value_text(value) -> str | None:
    """A reading's value as canonical text: a Decimal in plain notation (1E+3 -> "1000",
    1.50 -> "1.5"), text (UNIQUE_COUNT) and None (COUNT) as they are. Equal Decimals
    have equal text, so comparing texts compares the values."""
    return format_decimal(value) if isinstance(value, Decimal) else value


def signature(subject: str, event_type: str, time_ns: int, readings: tuple) -> tuple:
    """What a copy of an event bills: whose usage, which type, when, and each meter's
    (meter, dimensions, value). Nothing else (position, ingest time, the raw text) counts.

    Readings carry their values either as parsed (a UsageEvent's Decimals) or as
    `value_text`: either way equal values compare equal, so a path may use the form it
    holds, as long as it compares signatures of one form.
    """
    return (subject, event_type, time_ns, readings)


def metering_signature(event: UsageEvent) -> tuple:
    """The signature of a parsed event (its readings' values as parsed).

    Streaming deduplication keeps its `signature_digest`; release 0.1.0 kept it whole,
    and such state must still decode after an `--update`, so its form (a tuple holding
    `schemas.events.Reading`s) is pinned by tests/test_upgrade.py.
    """
    return signature(event.subject, event.type, event.time_ns, event.readings)


def text_readings(readings) -> tuple:
    """Readings as (meter, dimensions, value text): the recompute's form of them."""
    return tuple((r.meter, r.dimensions, value_text(r.value)) for r in readings)


SIGNATURE_DIGEST_BYTES = 16


def signature_digest(parsed: tuple) -> bytes:
    """A 16-byte BLAKE2b digest of a parsed signature (`metering_signature`'s form): equal
    signatures have equal digests, and two unequal ones collide with odds of 2**-128.

    It hashes an unambiguous text of the signature: JSON (ASCII, so any string encodes),
    each value as its type and canonical text, so Decimals equal as numbers (1E+3, 1000)
    digest alike and a text "1" never as the number 1, exactly as tuples compare."""
    subject, event_type, time_ns, readings = parsed
    text = json.dumps([subject, event_type, time_ns,
                       [[meter, dimensions, type(value).__name__, value_text(value)]
                        for meter, dimensions, value in readings]], separators=(",", ":"))
    return hashlib.blake2b(text.encode("ascii"), digest_size=SIGNATURE_DIGEST_BYTES).digest()


def conflicts(copy, kept) -> bool:
    """Whether a dropped copy would have billed differently from the kept one: a
    conflicting duplicate, still dropped, but counted apart for audit. Both are
    signatures of one form, or both their `signature_digest`s."""
    return copy != kept


@lru_cache(maxsize=4096)
def _window_bounds(start_ns: int, end_ns: int) -> tuple[str, str]:
    """RFC 3339 bounds of a window; memoised, as rows share few windows."""
    return format_time(start_ns), format_time(end_ns)


def usage_row(key: tuple[str, str, str], start_ns: int, end_ns: int, figures: tuple) -> dict:
    """The usage row of (subject, meter, dimensions) in the window [start, end), from the
    (value, event count, fingerprint) of its aggregation (`aggregation.extract`)."""
    subject, meter, dimensions = key
    value, event_count, fingerprint = figures
    window_start_text, window_end_text = _window_bounds(start_ns, end_ns)
    return {"subject": subject, "meter": meter, "dimensions": dimensions,
            "window_start": window_start_text, "window_end": window_end_text,
            "value": format_decimal(value), "event_count": event_count,
            "fingerprint": fingerprint}
