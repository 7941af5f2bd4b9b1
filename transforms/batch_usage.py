"""ComputeUsage: the batch (recompute) path, from payload batches to usage rows.

Semantically the streaming chain (ParseEvents -> deduplicate -> MeterReadings
-> fixed windows -> AggregateUsage), built for throughput on bounded input:
few, big elements instead of one per event.

1. `_ParseBatch` parses a batch of payloads and groups the valid events by
   identity shard: one element per shard per batch, not one per event.
2. `CombinePerKey(_FirstCopies)` merges the shards, keeping per (source, id)
   the copy with the smallest order (file, line, element; or ingest time), so
   the result is deterministic whatever order the runner uses, with the copy
   count and whether any copy would have metered differently (a conflict).
3. `_AggregateShard` folds each shard's first copies into exact usage
   accumulators per subject x meter x dimensions x window (the window start
   is computed, fixed and UTC-aligned, as `FixedWindows` would).
4. `CombinePerKey(_MergeUsage)` merges the accumulators of all shards.

Deduplication is over the whole input, so memory grows with the number of
distinct identities (it is the authority for a closed period).
"""
from __future__ import annotations

from collections import Counter
from decimal import Decimal
from hashlib import blake2b

import apache_beam as beam
from apache_beam import pvalue

from schemas import aggregation
from schemas.catalog import MeterCatalog
from schemas.events import Limits, Rejection, parse_payload
from schemas.values import format_decimal, format_time

DEAD_LETTERS = "dead_letters"
COUNTS = "counts"


def _shard_of(source: str, event_id: str, shards: int) -> int:
    digest = blake2b(f"{source}\x00{event_id}".encode("utf-8", "surrogatepass"), digest_size=4)
    return int.from_bytes(digest.digest(), "big") % shards


# An identity's entry: [order, first copy, copies, {copy: count} once copies differ].
# A copy is (subject, type, time_ns, ((meter, dimensions, value text), ...)): what it
# would bill, in plain tuples and strings because it crosses the shuffle (values are
# exact decimal text, back to Decimal when aggregated).

def _new_entry(order, copy) -> list:
    return [order, copy, 1, None]


def _merge_entry(into: list, other: list) -> None:
    if into[3] is None and other[3] is None and into[1] == other[1]:
        into[2] += other[2]
    else:
        variants = Counter(into[3] or {into[1]: into[2]})
        variants.update(other[3] or {other[1]: other[2]})
        into[2] += other[2]
        into[3] = variants
    if other[0] < into[0]:
        into[0], into[1] = other[0], other[1]


def _conflicts(entry: list) -> int:
    """Copies that would have billed differently from the first copy."""
    _, first, copies, variants = entry
    return 0 if variants is None else copies - variants[first]


def _text(value) -> str | None:
    """Canonical text of a reading's value, so re-spelled copies (1E3, 1000) are equal."""
    return format_decimal(value) if isinstance(value, Decimal) else value


class _ParseBatch(beam.DoFn):
    def __init__(self, catalog: MeterCatalog, limits: Limits, shards: int):
        self._catalog = catalog
        self._limits = limits
        self._shards = shards

    def process(self, batch):
        counts = Counter()
        shards: dict[int, dict] = {}
        for position, order, payload, *received in batch:
            counts["lines"] += 1
            for result in parse_payload(payload, position, order, self._catalog, self._limits,
                                        *received):
                counts["records"] += 1
                if isinstance(result, Rejection):
                    counts["dead_lettered"] += 1
                    counts[f"dead_lettered_by_code/{result.error_code}"] += 1
                    yield pvalue.TaggedOutput(DEAD_LETTERS, result)
                    continue
                identity = (result.source, result.id)
                copy = (result.subject, result.type, result.time_ns,
                        tuple((r.meter, r.dimensions, _text(r.value)) for r in result.readings))
                entries = shards.setdefault(_shard_of(*identity, self._shards), {})
                entry = entries.get(identity)
                if entry is None:
                    entries[identity] = _new_entry(result.order, copy)
                else:
                    _merge_entry(entry, _new_entry(result.order, copy))
        yield from shards.items()
        yield pvalue.TaggedOutput(COUNTS, counts)


class _FirstCopies(beam.CombineFn):
    """Merges {identity: entry} dicts of one shard."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, entries):
        return self.merge_accumulators([acc, entries])

    def merge_accumulators(self, accs):
        accs = sorted(accs, key=len, reverse=True)
        merged = accs[0]
        for other in accs[1:]:
            for identity, entry in other.items():
                mine = merged.get(identity)
                if mine is None:
                    merged[identity] = entry
                else:
                    _merge_entry(mine, entry)
        return merged

    def extract_output(self, acc):
        return acc


class _AggregateShard(beam.DoFn):
    def __init__(self, catalog: MeterCatalog, window_ns: int, start_ns: int | None,
                 end_ns: int | None):
        self._aggregations = {m.key: m.aggregation for m in catalog.meters}
        self._numeric = {m.key for m in catalog.meters if m.numeric}
        self._window_ns = window_ns
        self._start, self._end = start_ns, end_ns

    def process(self, shard):
        _, entries = shard
        counts = Counter()
        usage: dict[tuple, list] = {}
        window_ns = self._window_ns
        for (source, event_id), entry in entries.items():
            counts["accepted"] += 1
            counts["duplicates"] += entry[2] - 1
            counts["conflicting_duplicates"] += _conflicts(entry)
            subject, _, time_ns, readings = entry[1]
            if self._start is not None and not self._start <= time_ns < self._end:
                counts["outside_period"] += 1
                continue
            if not readings:
                counts["unmetered"] += 1
                continue
            identity = aggregation.identity_hash(source, event_id)
            window = time_ns - time_ns % window_ns
            for meter, dimensions, value in readings:
                key = (subject, meter, dimensions, window)
                acc = usage.get(key)
                if acc is None:
                    acc = usage[key] = aggregation.new_accumulator(self._aggregations[meter])
                if meter in self._numeric:
                    value = Decimal(value)
                aggregation.add_reading(acc, value, time_ns, event_id, identity)
        yield from usage.items()
        yield pvalue.TaggedOutput(COUNTS, counts)


class _MergeUsage(beam.CombineFn):
    def create_accumulator(self):
        return None

    def add_input(self, acc, other):
        return other if acc is None else aggregation.merge_accumulators([acc, other])

    def merge_accumulators(self, accs):
        present = [acc for acc in accs if acc is not None]
        return aggregation.merge_accumulators(present) if present else None

    def extract_output(self, acc):
        return acc


def usage_row(keyed, window_ns: int) -> dict:
    (subject, meter, dimensions, window), acc = keyed
    value, event_count, fingerprint = aggregation.extract(acc)
    return {"subject": subject, "meter": meter, "dimensions": dimensions,
            "window_start": format_time(window), "window_end": format_time(window + window_ns),
            "value": format_decimal(value), "event_count": event_count,
            "fingerprint": fingerprint}


class ComputeUsage(beam.PTransform):
    """Batches of payload tuples -> {usage rows, dead_letters, counts}.

    `usage` rows have the SPEC §4 columns; `counts` are Counters (lines,
    records, accepted, duplicates, conflicting_duplicates, dead_lettered[_by_code],
    unmetered, outside_period) to be summed.
    """

    def __init__(self, catalog: MeterCatalog, limits: Limits, window_ns: int,
                 start_ns: int | None = None, end_ns: int | None = None, shards: int = 32):
        super().__init__()
        self._catalog = catalog
        self._limits = limits
        self._window_ns = window_ns
        self._start, self._end = start_ns, end_ns
        self._shards = shards

    def expand(self, batches):
        window_ns = self._window_ns
        parsed = batches | "ParseBatch" >> beam.ParDo(
            _ParseBatch(self._catalog, self._limits, self._shards)).with_outputs(
            DEAD_LETTERS, COUNTS, main="shards")
        firsts = parsed.shards | "FirstCopies" >> beam.CombinePerKey(_FirstCopies())
        partial = firsts | "AggregateShard" >> beam.ParDo(
            _AggregateShard(self._catalog, window_ns, self._start, self._end)).with_outputs(
            COUNTS, main="usage")
        usage = (partial.usage
                 | "MergeUsage" >> beam.CombinePerKey(_MergeUsage())
                 | "UsageRow" >> beam.Map(usage_row, window_ns))
        counts = ((parsed.counts, partial.counts,
                   usage | "CountRows" >> beam.Map(lambda _: Counter(usage_rows=1)))
                  | "AllCounts" >> beam.Flatten())
        return {"usage": usage, DEAD_LETTERS: parsed.dead_letters, COUNTS: counts}
