"""ParseEvents: payloads in, accepted events and dead letters out; nothing lost."""
from __future__ import annotations

import apache_beam as beam
from apache_beam import pvalue

from schemas.catalog import MeterCatalog
from schemas.events import Limits, Rejection

EVENTS = "events"
DEAD_LETTERS = "dead_letters"


class ParsePayloadsFn(beam.DoFn):
    """ParseEvents' per-payload step (public so that benchmarks/cost.py can time it
    outside the runner)."""

    def __init__(self, catalog: MeterCatalog, limits: Limits):
        self._catalog = catalog
        self._limits = limits

    def process(self, payload):
        for result in payload.parse(self._catalog, self._limits):
            if isinstance(result, Rejection):
                yield pvalue.TaggedOutput(DEAD_LETTERS, result)
            else:
                yield result


class ParseEvents(beam.PTransform):
    """Payloads (schemas.events.Payload) -> `events` (UsageEvent) and `dead_letters` (Rejection).

    Every payload yields at least one output: one per event of a CloudEvents
    batch, or one rejection. Meter values are checked here, before
    deduplication, so a rejected event never claims its identity.
    """

    def __init__(self, catalog: MeterCatalog, limits: Limits):
        super().__init__()
        self._catalog = catalog
        self._limits = limits

    def expand(self, payloads):
        return payloads | "Parse" >> beam.ParDo(
            ParsePayloadsFn(self._catalog, self._limits)).with_outputs(DEAD_LETTERS, main=EVENTS)
