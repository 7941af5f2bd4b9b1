"""StreamUsage: the streaming pipeline's core, from payloads to usage panes, without I/O.

Kept apart from sources and sinks so `TestStream` can drive exactly what
runs in production.
"""
from __future__ import annotations

import apache_beam as beam

from schemas.catalog import MeterCatalog
from schemas.events import Limits
from transforms.aggregate import AggregateUsage, MeterReadings
from transforms.dedup import DeduplicateEvents
from transforms.parse import ParseEvents
from transforms.windowing import AssignEventTime, RouteTooLate, WindowUsage

NS = 1_000_000_000
REPLAYED = "replay:"  # position prefix of events a restored job replays from `events`


def is_live(element) -> bool:
    """False for what a restored job replayed (already recorded by an earlier job)."""
    return not element.position.startswith(REPLAYED)


class StreamUsage(beam.PTransform):
    """Payload tuples -> {dead_letters, accepted, duplicates, too_late, usage}.

    - dead_letters: Rejections
    - accepted: first copies of each identity (incl. too-late and unmetered ones)
    - duplicates: dropped copies (Duplicate)
    - too_late: (event, lateness ns) past window end + allowed lateness
    - usage: accumulating usage rows per pane, with pane timing/index/is_final
    Replayed events feed deduplication state and the aggregation only.
    """

    def __init__(self, catalog: MeterCatalog, limits: Limits, window_ns: int,
                 allowed_lateness_ns: int, early_firing_seconds: int, dedup_horizon_ns: int):
        super().__init__()
        self._catalog = catalog
        self._limits = limits
        self._window_ns = window_ns
        self._lateness_ns = allowed_lateness_ns
        self._early_seconds = early_firing_seconds
        self._horizon_ns = dedup_horizon_ns

    def expand(self, payloads):
        parsed = payloads | "ParseEvents" >> ParseEvents(self._catalog, self._limits)
        deduped = (parsed.events
                   | "AssignEventTime" >> AssignEventTime()
                   | "Deduplicate" >> DeduplicateEvents(self._horizon_ns // NS))
        routed = deduped.unique | "RouteTooLate" >> RouteTooLate(self._window_ns,
                                                                 self._lateness_ns)
        usage = ((routed.in_time | "MeterReadings" >> MeterReadings(self._catalog)).readings
                 | "WindowUsage" >> WindowUsage(self._window_ns // NS, self._early_seconds,
                                                self._lateness_ns // NS)
                 | "AggregateUsage" >> AggregateUsage(with_pane=True))
        return {
            "dead_letters": parsed.dead_letters,
            "accepted": deduped.unique | "LiveAccepted" >> beam.Filter(is_live),
            "duplicates": deduped.duplicates | "LiveDuplicates" >> beam.Filter(is_live),
            "too_late": routed.too_late | "LiveTooLate" >> beam.Filter(
                lambda late: is_live(late[0])),
            "usage": usage,
        }
