"""Recompute: exact usage for closed periods, in batch, from stored events.

Reads CloudEvents JSONL files (one event or one CloudEvents batch per line),
parses and validates them whole against the meter catalog, deduplicates by
(source, id) over the whole input (the smallest file:line copy wins), keeps
the events of the period, assigns each to its fixed UTC event-time window and
aggregates every meter exactly. With `--output-dir` it writes:

  usage.jsonl        one row per subject x meter x dimensions x window
  dead_letter.jsonl  one row per rejected line or event, with error_code
  summary.json       counts, and the conservation check
                     records read = accepted + duplicates + dead-lettered

The same transforms run in the streaming pipeline; only the source, the
windowing trigger and the sinks differ.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import FixedWindows

from schemas.catalog import CatalogError, load_catalog
from schemas.events import DEFAULT_MAX_FUTURE_SKEW_NS, Limits
from schemas.values import parse_duration, parse_rfc3339
from transforms.aggregate import AggregateUsage, MeterReadings
from transforms.dedup import DeduplicateEvents
from transforms.files import ReadPayloadLines, WriteSortedLines
from transforms.outcomes import SummarizeOutcomes, dead_letter_line, usage_line
from transforms.parse import ParseEvents

NS = 1_000_000_000


class RecomputeOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--meters",
                            help="Meter catalog YAML file.")
        parser.add_argument("--input", action="append",
                            help="CloudEvents JSONL file or glob, local or gs:// (repeatable).")
        parser.add_argument("--output_dir", "--output-dir", dest="output_dir",
                            help="Directory for usage.jsonl, dead_letter.jsonl, summary.json.")
        parser.add_argument("--window", default="1h",
                            help="Fixed event-time window size, aligned to UTC: 1m, 15m, 1h, 1d.")
        parser.add_argument("--period_start", "--period-start", dest="period_start",
                            help="Start of the period (RFC 3339, inclusive, aligned to the "
                                 "window). Without a period every window is computed.")
        parser.add_argument("--period_end", "--period-end", dest="period_end",
                            help="End of the period (RFC 3339, exclusive, aligned to the window).")
        parser.add_argument("--max_future_skew", "--max-future-skew", dest="max_future_skew",
                            default=f"{DEFAULT_MAX_FUTURE_SKEW_NS // NS}s",
                            help="Reject events whose time is further ahead of now than this.")


def check_required(options: RecomputeOptions) -> None:
    """Beam options cannot be `required` (every pipeline parses every options class)."""
    for flag, value in (("--meters", options.meters), ("--input", options.input),
                        ("--output-dir", options.output_dir)):
        if not value:
            raise ValueError(f"{flag} is required")


def period_bounds(options: RecomputeOptions, window_ns: int) -> tuple[int | None, int | None]:
    """Validated [start, end) in ns, or (None, None); bounds must align to the window."""
    if (options.period_start is None) != (options.period_end is None):
        raise ValueError("--period-start and --period-end go together")
    if options.period_start is None:
        return None, None
    start, end = parse_rfc3339(options.period_start), parse_rfc3339(options.period_end)
    if start >= end:
        raise ValueError("--period-start must be before --period-end")
    for name, bound in (("--period-start", start), ("--period-end", end)):
        if bound % window_ns:
            raise ValueError(f"{name} must align to the {options.window} window")
    return start, end


class SelectPeriod(beam.PTransform):
    """Events -> those in [start, end) (main) and `outside` the period."""

    def __init__(self, start_ns: int | None, end_ns: int | None):
        super().__init__()
        self._start, self._end = start_ns, end_ns

    def expand(self, events):
        start, end = self._start, self._end

        def route(event):
            inside = start is None or start <= event.time_ns < end
            yield event if inside else beam.pvalue.TaggedOutput("outside", event)

        return events | "InPeriod" >> beam.FlatMap(route).with_outputs("outside", main="inside")


def build(pipeline: beam.Pipeline, options: RecomputeOptions, limits: Limits) -> None:
    """Composes the recompute pipeline on `pipeline`."""
    check_required(options)
    catalog = load_catalog(options.meters)
    window_ns = parse_duration(options.window)
    start, end = period_bounds(options, window_ns)
    out = options.output_dir.rstrip("/")

    lines = pipeline | "Read" >> ReadPayloadLines(options.input)
    parsed = lines | "ParseEvents" >> ParseEvents(catalog, limits)
    deduped = parsed.events | "Deduplicate" >> DeduplicateEvents()
    period = deduped.unique | "SelectPeriod" >> SelectPeriod(start, end)
    metered = period.inside | "MeterReadings" >> MeterReadings(catalog)
    usage = (metered.readings
             | "Window" >> beam.WindowInto(FixedWindows(window_ns // NS))
             | "AggregateUsage" >> AggregateUsage())

    _ = (usage | "UsageLines" >> beam.Map(usage_line)
         | "WriteUsage" >> WriteSortedLines(f"{out}/usage.jsonl"))
    _ = (parsed.dead_letters | "DeadLetterLines" >> beam.Map(dead_letter_line)
         | "WriteDeadLetters" >> WriteSortedLines(f"{out}/dead_letter.jsonl"))
    _ = ({"lines": lines, "parsed_events": parsed.events, "accepted": deduped.unique, "duplicates": deduped.duplicates,
          "dead_letters": parsed.dead_letters, "unmetered": metered.unmetered,
          "outside_period": period.outside, "usage_rows": usage}
         | "Summarize" >> SummarizeOutcomes(f"{out}/summary.json", {
             "meters": options.meters, "inputs": options.input, "window": options.window,
             "period_start": options.period_start, "period_end": options.period_end}))


def run(argv: list[str] | None = None) -> dict:
    """Runs the recompute to files and returns the summary it wrote."""
    options = RecomputeOptions(argv)
    recompute = options.view_as(RecomputeOptions)
    skew_ns = parse_duration(recompute.max_future_skew)
    limits = Limits(now_ns=time.time_ns(), max_future_skew_ns=skew_ns)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, recompute, limits)
    pipeline.run().wait_until_finish()
    with beam.io.filesystems.FileSystems.open(f"{recompute.output_dir.rstrip('/')}/summary.json") as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        parser = argparse.ArgumentParser(prog="tallyflow recompute", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        RecomputeOptions._add_argparse_args(parser)
        parser.epilog = "Any Beam pipeline option (--runner, --direct_num_workers, ...) also applies."
        parser.print_help()
        return 0
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    print("tallyflow recompute: running the batch pipeline ...", file=sys.stderr)
    try:
        summary = run(argv)
    except (CatalogError, ValueError, OSError) as e:
        print(f"tallyflow recompute: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0 if summary["conservation"]["holds"] else 1


if __name__ == "__main__":
    sys.exit(main())
