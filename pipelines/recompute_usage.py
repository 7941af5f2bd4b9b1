"""Recompute: exact usage for closed periods, in batch, from stored events.

The authority for closed periods. It reads CloudEvents, either from JSONL files
(`--input`, one event or one CloudEvents batch per line) or, without
`--input`, the period's accepted events from the BigQuery `events` table; it
parses and validates them whole against the meter catalog, deduplicates by
(source, id) over the whole input (the smallest file:line, or the earliest
ingested copy, wins), keeps the events of the period, assigns each to its
fixed UTC event-time window and aggregates every meter exactly.

With `--output-dir` it writes files:
  usage.jsonl        one row per subject x meter x dimensions x window
  dead_letter.jsonl  one row per rejected line or event, with error_code
  summary.json       counts, and the conservation check
                     records read = accepted + duplicates + dead-lettered
They are written into a folder beside it and moved in once all three are
complete, summary.json last; a run first removes the previous run's three
files, so a failed or killed run leaves no results that look current. An input
that cannot be read whole (a truncated or corrupt compressed file, one that
changes while it is read) fails the run (exit 3) naming the file.
Otherwise it restates the period in BigQuery: the rows go to a staging table
(pending Storage Write streams, committed once every row is written) and one
transaction appends them to `usage_recomputed` with the run's row in
`recompute_runs` (a new revision; history is kept). `--dirty` recomputes
exactly the windows `late_events` marked since they were last recomputed.

The transforms are the streaming pipeline's; only the source, the windowing
trigger and the sinks differ.
"""
from __future__ import annotations

import json
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.options import (UsageOptions, bigquery_target, load_catalog_anywhere,
                               parse_period, print_help)
from pipelines.policy import DIFFERENCE, SUCCESS, CommandFailed, quiet_beam, run_command
from schemas import names, sql
from schemas.events import Limits
from schemas.tables import DEAD_LETTER
from schemas.values import format_time, parse_duration, parse_window
from transforms import rows
from transforms.batch_usage import ComputeUsage
from transforms.bigquery import PENDING_METHOD, WriteRows
from transforms.bigquery_target import query
from transforms.files import (PublishResults, ReadPayloadBatches, WriteSortedBlocks,
                              WriteSortedLines, discard_staging, remove_results, staging_dir)
from transforms.outcomes import SummarizeCounts, WriteJson, dead_letter_line, usage_line
from transforms.restate import CommitRun, ReadPeriodEvents, RecomputeRun, create_staging
from transforms.runner import is_dataflow
from transforms.storage_read import DEFAULT_MAX_STREAMS

PIPELINE_NAME = "recompute_usage"
# files mode's results, in the order they are moved into --output-dir: the summary last
RESULT_FILES = ["usage.jsonl", "dead_letter.jsonl", "summary.json"]


class RecomputeOptions(UsageOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", action="append",
                            help="CloudEvents JSONL file or glob, local or gs:// (repeatable). "
                                 "Without it, events come from the BigQuery events table.")
        parser.add_argument("--output_dir", "--output-dir", dest="output_dir",
                            help="Write usage.jsonl, dead_letter.jsonl and summary.json here "
                                 "instead of restating the period in BigQuery.")
        parser.add_argument("--period_start", "--period-start", dest="period_start",
                            help="Start of the period (RFC 3339, inclusive, aligned to the "
                                 "window). With files and no period, every window is computed.")
        parser.add_argument("--period_end", "--period-end", dest="period_end",
                            help="End of the period (RFC 3339, exclusive, aligned to the window).")
        parser.add_argument("--dirty", action="store_true", default=False,
                            help="Recompute exactly the windows late_events marked since they "
                                 "were last recomputed (BigQuery mode).")
        parser.add_argument("--reason", default="",
                            help="Why the period is recomputed; kept with the revision.")
        parser.add_argument("--dedup_shards", "--dedup-shards", dest="dedup_shards", type=int,
                            default=4,
                            help="Identity shards for deduplication. One worker holds a "
                                 "shard's identities and first copies in memory while it "
                                 "deduplicates them: raise it for periods of many millions "
                                 "of events.")
        parser.add_argument("--read_streams", "--read-streams", dest="read_streams", type=int,
                            default=0,
                            help="Most Storage Read API streams a period's events are read "
                                 "in, in parallel (BigQuery mode). 0: as many as BigQuery "
                                 f"offers, up to {DEFAULT_MAX_STREAMS}.")


def check_arguments(options: RecomputeOptions) -> None:
    """Beam options cannot be `required` (every pipeline parses every options class)."""
    if not options.meters:
        raise ValueError("--meters is required")
    if options.input and not options.output_dir:
        raise ValueError("--input needs --output-dir (BigQuery mode reads the events table)")
    if options.output_dir and not options.input:
        raise ValueError("--output-dir needs --input")
    if options.dedup_shards < 1:
        raise ValueError("--dedup_shards must be at least 1")
    if options.read_streams < 0:
        raise ValueError("--read_streams must be 0 (as many as offered) or more")
    if not options.input and not options.dirty and options.period_start is None:
        raise ValueError("BigQuery mode needs --period-start and --period-end, or --dirty")


def period_bounds(options: RecomputeOptions, window_ns: int) -> tuple[int | None, int | None]:
    """Validated [start, end) in ns, or (None, None); bounds must align to the window."""
    if (options.period_start is None) != (options.period_end is None):
        raise ValueError("--period-start and --period-end go together")
    if options.period_start is None:
        return None, None
    start, end = parse_period(options.period_start, options.period_end)
    for name, bound in (("--period-start", start), ("--period-end", end)):
        if bound % window_ns:
            raise ValueError(f"{name} must align to the {options.window} window")
    return start, end


def build(pipeline: beam.Pipeline, options: RecomputeOptions, limits: Limits,
          run: RecomputeRun | None = None, staging: str | None = None):
    """Composes the recompute on `pipeline`; returns the summary PCollection.

    Files mode when `options.input` is set: results are written into `staging`
    and moved into `--output-dir` once all are written; otherwise `run` names
    the period and the staging table to restate in BigQuery.
    """
    catalog = load_catalog_anywhere(options.meters)
    window_ns = parse_window(options.window)
    if run is None:
        start, end = period_bounds(options, window_ns)
        batches = pipeline | "Read" >> ReadPayloadBatches(options.input)
    else:
        start, end = run.period_start_ns, run.period_end_ns
        target = bigquery_target(options)
        batches = pipeline | "ReadEvents" >> ReadPeriodEvents(target, start, end,
                                                              options.read_streams)

    computed = batches | "ComputeUsage" >> ComputeUsage(catalog, limits, window_ns, start, end,
                                                        shards=options.dedup_shards,
                                                        blocks=run is None)
    usage, dead_letters = computed["usage"], computed["dead_letters"]
    summary = computed["counts"] | "Summarize" >> SummarizeCounts({
        "meters": options.meters, "inputs": options.input or ["bigquery:events"],
        "window": options.window,
        "period_start": None if start is None else format_time(start),
        "period_end": None if end is None else format_time(end)})

    if run is None:
        staging = staging or staging_dir(options.output_dir)
        usage_file, dead_letter_file, summary_file = (
            FileSystems.join(staging, name) for name in RESULT_FILES)
        written = (
            usage | "WriteUsage" >> WriteSortedBlocks(usage_file, usage_line),
            dead_letters | "DeadLetterLines" >> beam.Map(dead_letter_line)
            | "WriteDeadLetters" >> WriteSortedLines(dead_letter_file),
            summary | "WriteSummary" >> WriteJson(summary_file))
        _ = written | "Publish" >> PublishResults(staging, options.output_dir, RESULT_FILES)
        return summary

    bignumeric = {m.key for m in catalog.meters if m.precision == "BIGNUMERIC"}
    staged = usage | "Stage" >> WriteRows(
        target, run.staging_table, PENDING_METHOD,
        to_row=lambda r: run.row(r, r["meter"] in bignumeric))
    _ = dead_letters | "WriteDeadLetters" >> WriteRows(
        target, DEAD_LETTER, to_row=lambda r: rows.dead_letter_row(r, PIPELINE_NAME, run.run_id))
    return (staged, summary) | "CommitRun" >> CommitRun(target, run)


def dirty_periods(client, target, window_ns: int) -> list[tuple[int, int]]:
    """Runs of consecutive windows with too-late events no later recompute has covered."""
    starts = [row["start_us"] * 1000 for row in query(client, target.sql(sql.DIRTY_WINDOWS))]
    periods: list[list[int]] = []
    for start in starts:
        if periods and periods[-1][1] == start:
            periods[-1][1] = start + window_ns
        else:
            periods.append([start, start + window_ns])
    return [tuple(p) for p in periods]


def run(argv: list[str] | None = None) -> list[dict]:
    """Runs the recompute; returns one summary per run (one, or one per dirty period)."""
    options = PipelineOptions(argv)
    recompute = options.view_as(RecomputeOptions)
    check_arguments(recompute)
    limits = Limits(now_ns=time.time_ns() if recompute.input else None,
                    max_future_skew_ns=parse_duration(recompute.max_future_skew))
    if recompute.input:
        return [run_files(options, recompute, limits)]

    window_ns = parse_window(recompute.window)
    target = bigquery_target(recompute)
    client = target.client()
    if recompute.dirty:
        periods = dirty_periods(client, target, window_ns)
        reason = recompute.reason or "too-late events (--dirty)"
    else:
        periods = [period_bounds(recompute, window_ns)]
        reason = recompute.reason or "requested"
    summaries = []
    for start, end in periods:
        print(f"tallyflow recompute: {format_time(start)} .. {format_time(end)}", file=sys.stderr)
        restatement = RecomputeRun(names.new_run_id("recompute"), start, end, window_ns, reason,
                                   time.time_ns())
        create_staging(client, target, restatement)
        pipeline = beam.Pipeline(options=options)
        build(pipeline, recompute, limits, restatement)
        result = pipeline.run()
        if is_dataflow(options.view_as(StandardOptions).runner):
            summaries.append({"run_id": restatement.run_id, "submitted": True})
            continue
        result.wait_until_finish()
        summaries.append(committed_summary(client, target, restatement.run_id))
    return summaries


def run_files(options: PipelineOptions, recompute: RecomputeOptions, limits: Limits) -> dict:
    """Files mode. The previous results go first and the new ones appear only when
    the run succeeds, so `--output-dir` never shows results a failed run did not make
    (bad arguments, refused while building, leave the previous results alone)."""
    staging = staging_dir(recompute.output_dir)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, recompute, limits, staging=staging)
    remove_results(recompute.output_dir, RESULT_FILES)
    try:
        result = pipeline.run()
        # a template launch must not wait for its job
        if is_dataflow(options.view_as(StandardOptions).runner):
            return {"output_dir": recompute.output_dir, "submitted": True}
        result.wait_until_finish()
    except BaseException:
        discard_staging(staging)
        raise
    with FileSystems.open(FileSystems.join(recompute.output_dir, RESULT_FILES[-1])) as f:
        return json.load(f)


def committed_summary(client, target, run_id: str) -> dict:
    found = query(client, target.sql(sql.COMMITTED_RUN), [("run_id", "STRING", run_id)])
    if not found:
        raise CommandFailed(f"run {run_id} finished but did not commit")
    return {**json.loads(found[0]["summary"]), "run_id": run_id,
            "revision": found[0]["revision"]}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help("tallyflow recompute", __doc__, RecomputeOptions)
        return 0
    quiet_beam()
    print("tallyflow recompute: running the batch pipeline ...", file=sys.stderr)
    return run_command("tallyflow recompute", lambda: report(run(argv)))


def report(summaries: list[dict]) -> int:
    """Prints the summaries; 1 when conservation does not hold for one of them."""
    if not summaries:
        print("tallyflow recompute: nothing to recompute", file=sys.stderr)
    for summary in summaries:
        print(json.dumps(summary, indent=2))
    held = all(s.get("conservation", {}).get("holds", True) for s in summaries)
    return SUCCESS if held else DIFFERENCE


if __name__ == "__main__":
    sys.exit(main())
