"""ComputeUsage: the batch (recompute) path, from payload batches to usage rows.

Semantically the streaming chain (ParseEvents -> deduplicate -> MeterReadings
-> fixed windows -> AggregateUsage), built for throughput on bounded input:
few, big elements instead of one per event.

1. `_ParseBatch` parses a batch of payloads (the common well-formed event by
   `FastAccept`, anything else by the full validator) into compact records,
   grouped by identity shard: one element per shard per batch, not one per event.
2. `GroupByKey` brings each shard's records together.
3. `_DeduplicateAndAggregate` keeps, per (source, id), the copy with the smallest
   order (file, line, element; or ingest time), so the result is deterministic
   whatever order the runner uses; counts the other copies and those that would
   have metered differently (conflicts); and folds the first copies into exact
   usage accumulators per subject x meter x dimensions x window (the window
   start is computed, fixed and UTC-aligned, as `FixedWindows` would).
4. The partial accumulators of each identity shard go, as one pickled dict per
   usage shard (by subject x meter x dimensions), through a second `GroupByKey`
   to `_MergeUsage`, which merges them into usage rows: a usage key's partials
   meet in one place, and the shuffle carries a few big elements, not one per
   key and shard. Its rows leave as one list per usage shard, for a sink to
   write in bulk (`blocks`), or one by one.

Deduplication is over the whole input (it is the authority for a closed
period), so a shard's identities are held in memory while it is processed:
more shards, less memory per worker.

What decides the bill (the window, the metering signature and conflict rule,
the usage row, the aggregation and fingerprint) is `schemas.metering`'s and
`schemas.aggregation`'s, shared with the streaming transforms; only the
plumbing differs.
"""
from __future__ import annotations

import gc
import pickle
import zlib
from collections import Counter
from contextlib import contextmanager

import apache_beam as beam
from apache_beam import pvalue

from schemas import aggregation
from schemas.catalog import MeterCatalog
from schemas.events import Limits, Rejection
from schemas.fastpath import FastAccept
from schemas.metering import conflicts, signature, text_readings, usage_row, window_start

DEAD_LETTERS = "dead_letters"
COUNTS = "counts"

# A record is one accepted event as the recompute needs it, in plain tuples and
# strings because it crosses the shuffle:
#   (source, id, order, signature)
# with the metering signature's readings as (meter, dimensions, value text): values
# are canonical text (re-spelled copies like 1E3 and 1000 are equal), back to Decimal
# when aggregated. A shard's records of one batch cross the shuffle as one pickled
# list: pickle writes the strings records share (path, meter, dimensions) once, and
# decodes about ten times faster than Beam's element-wise coder would.
_ORDER, _SIGNATURE = 2, 3


@contextmanager
def paused_gc():
    """Pauses CPython's cyclic garbage collector for a hot loop.

    The loops below build millions of small tuples that live until the end of the
    shard or batch; the collector would rescan them again and again (about 15% of
    a recompute). They form no reference cycles, so nothing is left uncollected:
    plain reference counting frees them, and the collector resumes afterwards. It
    only changes when collection happens, never a result.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _shard_of(event_id: str, shards: int) -> int:
    """The identity shard of an event: by id alone, so every copy of (source, id) meets.

    A stable hash (CRC-32), not `hash()`, which differs between worker processes.
    """
    return zlib.crc32(event_id.encode("utf-8", "surrogatepass")) % shards


class _ParseBatch(beam.DoFn):
    def __init__(self, catalog: MeterCatalog, limits: Limits, shards: int):
        self._catalog = catalog
        self._limits = limits
        self._shards = shards

    def setup(self):
        self._fast = FastAccept(self._catalog, self._limits)

    def process(self, batch):
        counts, rejections = Counter(), []
        with paused_gc():  # until the records are pickled and freed: none is left to rescan
            blobs = [(shard, pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL))
                     for shard, records in self._parse(batch, counts, rejections).items()]
        for rejection in rejections:
            yield pvalue.TaggedOutput(DEAD_LETTERS, rejection)
        yield from blobs
        yield pvalue.TaggedOutput(COUNTS, counts)

    def _parse(self, batch, counts: Counter, rejections: list) -> dict[int, list]:
        """Records of the batch by identity shard; rejections and counts on the side."""
        shards: dict[int, list] = {}
        accept, now_ns, n = self._fast.accept, self._limits.now_ns, self._shards

        def add(record):
            shards.setdefault(_shard_of(record[1], n), []).append(record)

        fast = 0
        for item in batch:  # Payloads
            accepted = None
            if not item.attributes:  # attributes may make it a binary-mode event
                try:
                    accepted = accept(item.data, now_ns if item.ingest_ns is None
                                      else item.ingest_ns)
                except Exception:  # a fast-path bug: the full validator decides
                    accepted = None
            if accepted is not None:
                fast += 1
                source, event_id, event_type, subject, time_ns, readings = accepted
                add((source, event_id, item.order, signature(subject, event_type, time_ns,
                                                             readings)))
                continue
            for result in item.parse(self._catalog, self._limits):
                counts["records"] += 1
                if isinstance(result, Rejection):
                    counts["dead_lettered"] += 1
                    counts[f"dead_lettered_by_code/{result.error_code}"] += 1
                    rejections.append(result)
                    continue
                add((result.source, result.id, result.order, signature(
                    result.subject, result.type, result.time_ns,
                    text_readings(result.readings))))
        counts["lines"] += len(batch)
        counts["records"] += fast
        return shards


def _first_copies(batches, counts: Counter):
    """The first copy (smallest order) of every identity among a shard's pickled batches."""
    firsts: dict[tuple, tuple] = {}
    others: dict[tuple, list] = {}
    for blob in batches:
        for record in pickle.loads(blob):
            identity = record[:2]
            first = firsts.setdefault(identity, record)
            if first is not record:
                others.setdefault(identity, []).append(record)
    for identity, copies in others.items():
        copies.append(firsts[identity])
        first = min(copies, key=lambda r: r[_ORDER])
        firsts[identity] = first
        counts["duplicates"] += len(copies) - 1
        counts["conflicting_duplicates"] += sum(conflicts(c[_SIGNATURE], first[_SIGNATURE])
                                                for c in copies)
    counts["accepted"] += len(firsts)
    return firsts.values()


class _DeduplicateAndAggregate(beam.DoFn):
    def __init__(self, catalog: MeterCatalog, window_ns: int, start_ns: int | None,
                 end_ns: int | None, shards: int):
        self._aggregations = {m.key: m.aggregation for m in catalog.meters}
        self._shards = shards
        self._window_ns = window_ns
        self._start, self._end = start_ns, end_ns

    def process(self, shard):
        _, batches = shard
        counts = Counter()
        partials: dict[int, dict] = {}
        with paused_gc():  # until the shard's objects are freed: none is left to rescan
            for key, found in self._readings(batches, counts).items():
                partials.setdefault(_usage_shard_of(key, self._shards), {})[key] = \
                    aggregation.accumulate(self._aggregations[key[1]], found)
            blobs = [(usage_shard, pickle.dumps(accumulators, protocol=pickle.HIGHEST_PROTOCOL))
                     for usage_shard, accumulators in partials.items()]
            del partials
        yield from blobs
        yield pvalue.TaggedOutput(COUNTS, counts)

    def _readings(self, batches, counts: Counter) -> dict[tuple, list]:
        """Usage key -> readings (value, time_ns, id, identity hash) of first copies."""
        readings: dict[tuple, list] = {}
        window_ns, start, end = self._window_ns, self._start, self._end
        identity_hash = aggregation.identity_hash
        for source, event_id, _, (subject, _, time_ns, metered) in _first_copies(batches,
                                                                                   counts):
            if start is not None and not start <= time_ns < end:
                counts["outside_period"] += 1
                continue
            if not metered:
                counts["unmetered"] += 1
                continue
            reading = (time_ns, event_id, identity_hash(source, event_id))
            window = window_start(time_ns, window_ns)
            for meter, dimensions, value in metered:
                key = (subject, meter, dimensions, window)
                found = readings.get(key)
                if found is None:
                    found = readings[key] = []
                found.append((value, *reading))
        return readings


def _usage_shard_of(key: tuple, shards: int) -> int:
    """The usage shard of (subject, meter, dimensions, window): stable across processes."""
    subject, meter, dimensions, _ = key
    return zlib.crc32(f"{subject}\x00{meter}\x00{dimensions}".encode(
        "utf-8", "surrogatepass")) % shards


class _MergeUsage(beam.DoFn):
    """A usage shard's partials -> its usage rows, as one list (a block): a row costs a
    dict, not a Beam element (at high cardinality there is about a row per event)."""

    def __init__(self, window_ns: int):
        self._window_ns = window_ns

    def process(self, shard):
        _, blobs = shard
        merged: dict[tuple, list] = {}
        with paused_gc():
            for blob in blobs:
                for key, acc in pickle.loads(blob).items():
                    mine = merged.get(key)
                    merged[key] = acc if mine is None else aggregation.merge_accumulators(
                        [mine, acc])
            window_ns, extract = self._window_ns, aggregation.extract
            block = [usage_row((subject, meter, dimensions), window, window + window_ns,
                               extract(acc))
                     for (subject, meter, dimensions, window), acc in merged.items()]
            del merged
            rows = len(block)
            yield block  # the sink writes it while the collector still waits
            del block
        yield pvalue.TaggedOutput(COUNTS, Counter(usage_rows=rows))


class ComputeUsage(beam.PTransform):
    """Batches (lists) of Payloads -> {usage rows, dead_letters, counts}.

    `usage` rows have the SPEC §4 columns; `counts` are Counters (lines,
    records, accepted, duplicates, conflicting_duplicates, dead_lettered[_by_code],
    unmetered, outside_period) to be summed. With `blocks`, `usage` holds lists of
    rows instead, one per usage shard, for a sink that writes them in bulk.
    """

    def __init__(self, catalog: MeterCatalog, limits: Limits, window_ns: int,
                 start_ns: int | None = None, end_ns: int | None = None, shards: int = 4,
                 blocks: bool = False):
        super().__init__()
        self._blocks = blocks
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
        partial = (parsed.shards
                   | "GroupShards" >> beam.GroupByKey()
                   | "DeduplicateAndAggregate" >> beam.ParDo(_DeduplicateAndAggregate(
                       self._catalog, window_ns, self._start, self._end,
                       self._shards)).with_outputs(COUNTS, main="usage"))
        merged = (partial.usage
                  | "GroupUsageShards" >> beam.GroupByKey()
                  | "MergeUsage" >> beam.ParDo(_MergeUsage(window_ns)).with_outputs(
                      COUNTS, main="usage"))
        counts = ((parsed.counts, partial.counts, merged.counts)
                  | "AllCounts" >> beam.Flatten())
        usage = merged.usage if self._blocks else merged.usage | "Rows" >> beam.FlatMap(iter)
        return {"usage": usage, DEAD_LETTERS: parsed.dead_letters, COUNTS: counts}
