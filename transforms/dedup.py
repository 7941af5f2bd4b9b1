"""DeduplicateEvents: one event per (source, id), first copy wins.

"First" is the copy with the smallest `order` (file, line, batch element; or
arrival). Two strategies, chosen by whether the input is bounded, so one
transform serves batch and streaming:

- bounded (recompute): a lifted CombinePerKey keeps the smallest copy. It
  deduplicates over the whole input, is deterministic however the runner
  orders elements, and pre-combines before the shuffle.
- unbounded (streaming): a stateful DoFn per identity emits the first copy at
  once and remembers the identity for `horizon` of event time past the
  event, then forgets it (state costs memory per identity: the horizon is a
  cost decision; recompute is the authority beyond it).

A later copy that would meter differently (other subject, type, time or
readings) is a conflict: still a duplicate, counted separately for audit.
"""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from schemas.events import UsageEvent

UNIQUE = "unique"
DUPLICATES = "duplicates"


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A dropped copy of an identity (or, from the combiner, `copies` of them)."""

    source: str
    id: str
    position: str
    kept_position: str
    copies: int
    conflicts: int


def metering_signature(event: UsageEvent) -> tuple:
    """What a copy would bill: two copies with equal signatures cannot conflict."""
    return (event.subject, event.type, event.time_ns, event.readings)


class _KeepFirstCopy(beam.CombineFn):
    """Accumulator: [winner, {signature: copies}]; the winner has the smallest order."""

    def create_accumulator(self):
        return [None, {}]

    def add_input(self, acc, event):
        if acc[0] is None or event.order < acc[0].order:
            acc[0] = event
        signature = metering_signature(event)
        acc[1][signature] = acc[1].get(signature, 0) + 1
        return acc

    def merge_accumulators(self, accs):
        merged = self.create_accumulator()
        for winner, signatures in accs:
            if winner is not None and (merged[0] is None or winner.order < merged[0].order):
                merged[0] = winner
            for signature, copies in signatures.items():
                merged[1][signature] = merged[1].get(signature, 0) + copies
        return merged

    def extract_output(self, acc):
        return acc


class _SplitFirstCopy(beam.DoFn):
    def process(self, keyed):
        _, (winner, signatures) = keyed
        yield winner
        copies = sum(signatures.values()) - 1
        if copies:
            conflicts = copies + 1 - signatures[metering_signature(winner)]
            yield pvalue.TaggedOutput(DUPLICATES, Duplicate(
                winner.source, winner.id, "", winner.position, copies, conflicts))


class _FirstCopyWithinHorizon(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen_signature", beam.coders.PickleCoder())
    EXPIRY = TimerSpec("forget_identity", TimeDomain.WATERMARK)

    def __init__(self, horizon_seconds: int):
        self._horizon = Duration(seconds=horizon_seconds)

    def process(self, keyed, timestamp=beam.DoFn.TimestampParam,
                seen=beam.DoFn.StateParam(SEEN), expiry=beam.DoFn.TimerParam(EXPIRY)):
        _, event = keyed
        first = seen.read()
        if first is None:
            seen.write((metering_signature(event), event.position))
            expiry.set(Timestamp.of(timestamp) + self._horizon)
            yield event
            return
        signature, kept_position = first
        yield pvalue.TaggedOutput(DUPLICATES, Duplicate(
            event.source, event.id, event.position, kept_position, 1,
            int(metering_signature(event) != signature)))

    @on_timer(EXPIRY)
    def forget(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


class DeduplicateEvents(beam.PTransform):
    """UsageEvents -> `unique` UsageEvents and `duplicates` (Duplicate records)."""

    def __init__(self, horizon_seconds: int = 7 * 86400):
        super().__init__()
        self._horizon_seconds = horizon_seconds

    def expand(self, events):
        keyed = events | "KeyByIdentity" >> beam.Map(lambda e: (e.identity, e))
        if events.is_bounded:
            kept = keyed | "KeepFirstCopy" >> beam.CombinePerKey(_KeepFirstCopy())
            return kept | "SplitFirstCopy" >> beam.ParDo(_SplitFirstCopy()).with_outputs(
                DUPLICATES, main=UNIQUE)
        return keyed | "FirstCopyWithinHorizon" >> beam.ParDo(
            _FirstCopyWithinHorizon(self._horizon_seconds)).with_outputs(DUPLICATES, main=UNIQUE)
