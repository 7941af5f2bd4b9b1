"""Meter readings and their exact aggregation per subject x meter x dimensions x window."""
from __future__ import annotations

import typing
from decimal import Decimal

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from schemas import aggregation
from schemas.aggregation import Aggregation
from schemas.catalog import MeterCatalog
from schemas.metering import usage_row

READINGS = "readings"
UNMETERED = "unmetered"


def event_timestamp(time_ns: int) -> Timestamp:
    """Beam timestamps are microseconds; flooring keeps each event in its window."""
    return Timestamp(micros=time_ns // 1000)


def shuffled_reading(kind: str, value, time_ns: int, event_id: str, identity: int) -> tuple:
    """A reading as it crosses the shuffle into the combine, in few bytes: a number as
    its exact text (Decimal(str(d)) is d, digits and exponent), the identity hash as 16
    bytes, and time and id only for LATEST, the one aggregation that reads them: about
    a third of the parsed form's encoded bytes (tests/test_shuffle_form.py)."""
    latest = kind == Aggregation.LATEST
    return (kind, str(value) if isinstance(value, Decimal) else value,
            time_ns if latest else None, event_id if latest else None,
            identity.to_bytes(16, "big"))


def combined_reading(reading: tuple) -> tuple:
    """A shuffled reading back as `aggregation.add_reading` takes it. A reading still in
    the shuffle when a job is updated in place may be in the earlier parsed form
    (Decimal value, int identity, always time and id): it is taken as it is."""
    kind, value, time_ns, event_id, identity = reading
    if isinstance(value, str) and Aggregation(kind).numeric:
        value = Decimal(value)
    if isinstance(identity, bytes):
        identity = int.from_bytes(identity, "big")
    return kind, value, time_ns, event_id, identity


@beam.typehints.with_output_types(typing.Tuple[typing.Tuple[str, str, str], typing.Any])
class ReadMetersFn(beam.DoFn):
    """MeterReadings' per-event step: each reading keyed for the Combine, in its
    shuffled form."""

    def __init__(self, catalog: MeterCatalog):
        # as plain text: readings and accumulators may outlive this code in runner state
        self._aggregations = {m.key: str(m.aggregation) for m in catalog.meters}

    def process(self, event):
        if not event.readings:
            yield pvalue.TaggedOutput(UNMETERED, event)
            return
        identity = aggregation.identity_hash(event.source, event.id)
        timestamp = event_timestamp(event.time_ns)
        for reading in event.readings:
            yield TimestampedValue(
                ((event.subject, reading.meter, reading.dimensions),
                 shuffled_reading(self._aggregations[reading.meter], reading.value,
                                  event.time_ns, event.id, identity)),
                timestamp)


class MeterReadings(beam.PTransform):
    """Deduplicated events -> `readings` keyed by (subject, meter, dimensions) and
    timestamped by event time, plus the `unmetered` events no meter reads.

    One event feeds every meter that reads its type.
    """

    def __init__(self, catalog: MeterCatalog):
        super().__init__()
        self._catalog = catalog

    def expand(self, events):
        return events | "ReadMeters" >> beam.ParDo(ReadMetersFn(self._catalog)).with_outputs(
            UNMETERED, main=READINGS)


class UsageCombineFn(beam.CombineFn):
    """Exact aggregation of one key's readings; each reading names its aggregation.

    Lifts (runs before the shuffle) because accumulators merge associatively
    and commutatively.
    """

    def create_accumulator(self):
        return None

    def add_input(self, acc, reading):
        kind, value, time_ns, event_id, identity = combined_reading(reading)
        if acc is None:
            acc = aggregation.new_accumulator(kind)
        return aggregation.add_reading(acc, value, time_ns, event_id, identity)

    def merge_accumulators(self, accs):
        present = [acc for acc in accs if acc is not None]
        return aggregation.merge_accumulators(present) if present else None

    def extract_output(self, acc):
        return aggregation.extract(acc)


class _FormatUsageRow(beam.DoFn):
    def __init__(self, with_pane: bool):
        self._with_pane = with_pane

    def process(self, keyed, window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        key, figures = keyed
        row = usage_row(key, window.start.micros * 1000, window.end.micros * 1000, figures)
        if self._with_pane:
            row.update(pane_timing=PaneInfoTiming.to_string(pane.timing),
                       pane_index=pane.index, is_final=pane.is_last)
        yield row


class AggregateUsage(beam.PTransform):
    """Windowed readings -> one usage row per subject x meter x dimensions x window (pane).

    Rows use SPEC §4 names; `value` is a decimal string and `dimensions` the
    meter's group-by values as canonical JSON text. With `with_pane`, rows also
    carry the pane's timing, index and finality (streaming).
    """

    def __init__(self, with_pane: bool = False):
        super().__init__()
        self._with_pane = with_pane

    def expand(self, readings):
        return (readings
                | "Combine" >> beam.CombinePerKey(UsageCombineFn())
                | "FormatRow" >> beam.ParDo(_FormatUsageRow(self._with_pane)))
