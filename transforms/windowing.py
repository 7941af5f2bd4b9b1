"""Event time, too-late routing and the streaming trigger (SPEC §3).

Beam drops data past allowed lateness inside the GroupByKey without telling
anyone, so `RouteTooLate` decides before windowing, from the time the
pipeline received the event: an event whose ingest time is past its window's
end + allowed lateness goes to `too_late` (recorded, its window marked for
recompute) and never reaches the aggregation. The watermark never runs ahead
of ingest time (on the DirectRunner it is the wall clock at the pull, on
Dataflow it lags it), so every event Beam would drop is routed here; events
routed here that Beam might still have taken are harmless: the recompute
counts them. Reconciliation's counts and fingerprints catch anything else.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms import trigger
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from schemas.metering import window_start
from transforms.aggregate import event_timestamp

TOO_LATE = "too_late"


class AssignEventTime(beam.PTransform):
    """Timestamps each event by its CloudEvents `time` (never the publish time)."""

    def expand(self, events):
        return events | "EventTime" >> beam.Map(
            lambda e: TimestampedValue(e, event_timestamp(e.time_ns)))


def closing_ns(time_ns: int, window_ns: int, allowed_lateness_ns: int) -> int:
    """When the window holding `time_ns` stops accepting data: its end + allowed lateness."""
    return window_start(time_ns, window_ns) + window_ns + allowed_lateness_ns


class RouteTooLate(beam.PTransform):
    """Events -> in-time events (main) and `too_late` (event, lateness in ns)."""

    def __init__(self, window_ns: int, allowed_lateness_ns: int):
        super().__init__()
        self._window_ns = window_ns
        self._lateness_ns = allowed_lateness_ns

    def expand(self, events):
        window_ns, lateness_ns = self._window_ns, self._lateness_ns

        def route(event):
            lateness = event.ingest_ns - closing_ns(event.time_ns, window_ns, lateness_ns)
            if lateness > 0:
                yield pvalue.TaggedOutput(TOO_LATE, (event, lateness))
            else:
                yield event

        return events | "ByIngestTime" >> beam.FlatMap(route).with_outputs(TOO_LATE,
                                                                          main="in_time")


class WindowUsage(beam.PTransform):
    """Fixed UTC windows; early panes every `early_seconds` of processing time, the
    on-time pane at the watermark, a late pane per late element within allowed
    lateness; accumulating, so each pane carries the window's whole value so far."""

    def __init__(self, window_seconds: int, early_seconds: int, allowed_lateness_seconds: int):
        super().__init__()
        self._window_seconds = window_seconds
        self._early_seconds = early_seconds
        self._lateness_seconds = allowed_lateness_seconds

    def expand(self, readings):
        return readings | "FixedWindows" >> beam.WindowInto(
            FixedWindows(self._window_seconds),
            trigger=trigger.AfterWatermark(
                early=trigger.AfterProcessingTime(self._early_seconds),
                late=trigger.AfterCount(1)),
            accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
            allowed_lateness=self._lateness_seconds)
