"""StreamUsage: the streaming pipeline's core, from payloads to usage panes, without I/O.

Kept apart from sources and sinks so `TestStream` can drive exactly what
runs in production.
"""
from __future__ import annotations

import apache_beam as beam

from schemas.catalog import MeterCatalog
from schemas.events import Limits
from schemas.tables import DEAD_LETTER, DUPLICATE_EVENTS, LATE_EVENTS
from schemas.values import NS
from transforms.aggregate import AggregateUsage, MeterReadings
from transforms.dedup import REPLAYED, DeduplicateEvents
from transforms.parse import ParseEvents
from transforms.windowing import AssignEventTime, RouteTooLate, WindowUsage


def is_live(element) -> bool:
    """False for what a restored job replayed (already recorded by an earlier job)."""
    return not element.position.startswith(REPLAYED)


def recorded_key(table: str, element) -> tuple:
    """What identifies a row an earlier job wrote to `table`, for `DropRecorded`:
    the position for `dead_letter` and `duplicate_events`, the identity for
    `late_events` (one accepted event per identity, and the table keeps no position)."""
    if table == LATE_EVENTS.name:
        return table, element.source, element.id
    return table, element.position.removeprefix(REPLAYED)


class DropRecorded(beam.PTransform):
    """Keeps what no job has written to `table` yet, so a message redelivered by a seek
    is not recorded twice: live elements not in `recorded` (`recorded_key` tuples),
    and with `replays_too` replayed ones not in it either. Without `recorded`, keeps
    live elements only."""

    def __init__(self, table: str, recorded=None, of=lambda element: element,
                 replays_too: bool = False):
        super().__init__()
        self._table = table
        self._recorded = recorded
        self._of = of
        self._replays_too = replays_too

    def expand(self, pcoll):
        table, of, replays_too = self._table, self._of, self._replays_too

        def new(element, recorded=None):
            element = of(element)
            if recorded is None:
                return is_live(element)
            return (replays_too or is_live(element)) and (
                recorded_key(table, element) not in recorded)

        if self._recorded is None:
            return pcoll | "Live" >> beam.Filter(new)
        return pcoll | "New" >> beam.Filter(new, beam.pvalue.AsDict(
            self._recorded | "AsKeys" >> beam.Map(lambda key: (key, True))))


class StreamUsage(beam.PTransform):
    """Payload tuples -> {dead_letters, accepted, duplicates, too_late, usage}.

    - dead_letters: Rejections
    - accepted: first copies of each identity (incl. too-late and unmetered ones)
    - duplicates: dropped copies (Duplicate)
    - too_late: (event, lateness ns) past window end + allowed lateness
    - usage: accumulating usage rows per pane, with pane timing/index/is_final
    Replayed events feed deduplication state and the aggregation only. With
    `recorded` (rows earlier jobs wrote, as `recorded_key` tuples), dead letters,
    duplicates and too-late records already written are dropped, and a
    replayed too-late event whose `late_events` row is missing is recorded.
    """

    def __init__(self, catalog: MeterCatalog, limits: Limits, window_ns: int,
                 allowed_lateness_ns: int, early_firing_seconds: int, dedup_horizon_ns: int,
                 recorded=None):
        super().__init__()
        self._catalog = catalog
        self._limits = limits
        self._window_ns = window_ns
        self._lateness_ns = allowed_lateness_ns
        self._early_seconds = early_firing_seconds
        self._horizon_ns = dedup_horizon_ns
        self._recorded = recorded

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
        recorded = self._recorded
        return {
            "dead_letters": parsed.dead_letters | "NewDeadLetters" >> DropRecorded(
                DEAD_LETTER.name, recorded),
            "accepted": deduped.unique | "LiveAccepted" >> beam.Filter(is_live),
            "duplicates": deduped.duplicates | "NewDuplicates" >> DropRecorded(
                DUPLICATE_EVENTS.name, recorded),
            "too_late": routed.too_late | "NewTooLate" >> DropRecorded(
                LATE_EVENTS.name, recorded, of=lambda late: late[0], replays_too=True),
            "usage": usage,
        }
