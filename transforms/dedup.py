"""DeduplicateEvents: one event per (source, id), the first copy to arrive wins.

A stateful DoFn per identity emits the first copy at once and remembers the
identity for `horizon` of event time past the event, then forgets it: state
costs memory per identity, so the horizon is a cost decision, and it must
outlive the allowed lateness. It works on bounded input too, where "first"
is the runner's processing order; the recompute (`ComputeUsage`) instead keeps
the copy with the smallest position, deterministically, over its whole input,
and is the authority beyond the horizon.

A later copy that would meter differently (other subject, type, time or
readings: `schemas.metering`'s signature and conflict rule, the recompute's
too) is a conflict: still a duplicate, counted separately for audit.

A copy from the same position (message id and element) as the kept one is a
replay, not a duplicate: a restarted job replays stored events (positions
prefixed `replay:`) and Pub/Sub redelivers the messages it seeks back over.
Replays are dropped without a trace.

State per identity is `SeenCoder`'s: the kept copy's signature digest and
position, about 40 bytes (docs/architecture.md, "Upgrading a running stream").
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from schemas.events import UsageEvent
from schemas.metering import (SIGNATURE_DIGEST_BYTES, conflicts, metering_signature,
                              signature_digest)
from transforms.event_coder import UsageEventCoder

# What crosses the shuffle into deduplication, typed so Beam encodes it compactly: the
# identity as two strings, the event with UsageEventCoder (transforms/event_coder.py).
KEYED_EVENT = beam.typehints.Tuple[beam.typehints.Tuple[str, str], UsageEvent]
beam.coders.registry.register_coder(UsageEvent, UsageEventCoder)

UNIQUE = "unique"
DUPLICATES = "duplicates"
REPLAYED = "replay:"  # position prefix of events a restored job replays from `events`


def same_position(position: str, other: str) -> bool:
    """Whether two copies come from the same message and element, replayed or not."""
    mine = position.removeprefix(REPLAYED)
    return bool(mine.partition("#")[0]) and mine == other.removeprefix(REPLAYED)


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A dropped copy of an identity, and where the kept copy came from."""

    source: str
    id: str
    position: str
    kept_position: str
    conflict: bool  # it would have billed differently from the kept copy


class SeenCoder(beam.coders.Coder):
    """What deduplication keeps of an identity's kept copy: (signature digest, position),
    encoded as a version byte, the 16-byte digest and the position's UTF-8.

    Release 0.1.0 kept (signature, position) pickled (PickleCoder; pickle's protocol
    2+ opens with 0x80, never this version byte): such state, in a job updated in
    place, decodes to the digest of its signature, so it compares as it always did."""

    VERSION = b"\x01"

    def encode(self, seen: tuple[bytes, str]) -> bytes:
        digest, position = seen
        return self.VERSION + digest + position.encode("utf-8", "surrogatepass")

    def decode(self, encoded: bytes) -> tuple[bytes, str]:
        if encoded[:1] != self.VERSION:
            signature, position = pickle.loads(encoded)
            return signature_digest(signature), position
        end = 1 + SIGNATURE_DIGEST_BYTES
        return encoded[1:end], encoded[end:].decode("utf-8", "surrogatepass")

    def is_deterministic(self) -> bool:
        return True


class _FirstCopyWithinHorizon(beam.DoFn):
    # The state's id is what a job updated in place finds its state by: keep it.
    SEEN = ReadModifyWriteStateSpec("seen_signature", SeenCoder())
    EXPIRY = TimerSpec("forget_identity", TimeDomain.WATERMARK)

    def __init__(self, horizon_seconds: int):
        self._horizon = Duration(seconds=horizon_seconds)

    def process(self, keyed, timestamp=beam.DoFn.TimestampParam,
                seen=beam.DoFn.StateParam(SEEN), expiry=beam.DoFn.TimerParam(EXPIRY)):
        _, event = keyed
        first = seen.read()
        if first is None:
            seen.write((signature_digest(metering_signature(event)), event.position))
            expiry.set(Timestamp.of(timestamp) + self._horizon)
            yield event
            return
        digest, kept_position = first
        if same_position(event.position, kept_position):
            return
        yield pvalue.TaggedOutput(DUPLICATES, Duplicate(
            event.source, event.id, event.position, kept_position,
            conflicts(signature_digest(metering_signature(event)), digest)))

    @on_timer(EXPIRY)
    def forget(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


class DeduplicateEvents(beam.PTransform):
    """UsageEvents -> `unique` UsageEvents and `duplicates` (Duplicate records)."""

    def __init__(self, horizon_seconds: int = 7 * 86400):
        super().__init__()
        self._horizon_seconds = horizon_seconds

    def expand(self, events):
        keyed = events | "KeyByIdentity" >> beam.Map(
            lambda e: (e.identity, e)).with_output_types(KEYED_EVENT)
        return keyed | "FirstCopyWithinHorizon" >> beam.ParDo(
            _FirstCopyWithinHorizon(self._horizon_seconds)).with_outputs(DUPLICATES, main=UNIQUE)
