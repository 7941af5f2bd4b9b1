"""Streaming usage: Pub/Sub CloudEvents -> exact usage panes in BigQuery.

    Pub/Sub -> ParseEvents -> dead letters (BigQuery, optional Pub/Sub topic)
            -> AssignEventTime (the event's `time`) -> DeduplicateEvents (state
               per (source, id) for a horizon that outlives allowed lateness;
               dropped copies to `duplicate_events`)
            -> `events` (every accepted event: the source of truth)
            -> RouteTooLate (past window end + allowed lateness -> `late_events`)
            -> MeterReadings -> WindowUsage (fixed UTC windows; early panes every
               N s, on-time pane, late panes; accumulating) -> AggregateUsage
            -> `usage_panes` (timing, index, is-last, window, fingerprint)

Every message ends up in exactly one of `events` (aggregated, unmetered or too
late; too-late ones also in `late_events`), `duplicate_events` or
`dead_letter`. With `--restore_open_windows`, a restarted job first replays the
accepted events of windows still open from `events`, so its panes and its
deduplication state are whole again.

Run with `tallyflow stream` (DirectRunner, until interrupted or
`--run_seconds`) or `python -m pipelines.streaming_usage` (Flex Template).
"""
from __future__ import annotations

import logging
import signal
import sys
import time
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.common import (UsageOptions, add_switch, bigquery_target, load_catalog_anywhere,
                              print_help)
from schemas.catalog import CatalogError
from schemas.events import Limits
from schemas.tables import DEAD_LETTER, DUPLICATE_EVENTS, EVENTS, LATE_EVENTS, USAGE_PANES
from schemas.values import parse_duration, parse_window
from transforms import rows
from transforms.bigquery import (CLIENT_METHOD, WRITE_METHODS, BigQueryTarget,
                                 ExpansionServiceUnavailable, QueryRows, WriteRows)
from transforms.pubsub import (PublishDeadLetters, ReadUsageMessages,
                               runner_supports_pubsub_extras)
from transforms.streaming import REPLAYED, StreamUsage

PIPELINE_NAME = "streaming_usage"
NS = 1_000_000_000


class StreamingUsageOptions(UsageOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--subscription",
                            help="Pub/Sub subscription to read usage events from: "
                                 "projects/PROJECT/subscriptions/NAME.")
        parser.add_argument("--bigquery_write_method", default=CLIENT_METHOD,
                            choices=WRITE_METHODS,
                            help="INSERT_ALL: the streaming insert API with deterministic "
                                 "insert ids (works on the emulator and BigQuery); "
                                 "STREAMING_INSERTS or STORAGE_WRITE_API: Beam's connector "
                                 "(Dataflow; the Storage Write API needs Beam's Java "
                                 "expansion service).")
        parser.add_argument("--allowed_lateness", default="48h",
                            help="How long after a window's end late data still updates it; "
                                 "later data goes to late_events.")
        parser.add_argument("--early_firing_seconds", type=int, default=60,
                            help="Processing-time seconds between early (provisional) panes.")
        parser.add_argument("--dedup_horizon",
                            help="Event-time span an identity is remembered for deduplication "
                                 "(default: window + allowed lateness + 1h).")
        parser.add_argument("--timestamp_attribute", default="ce-time",
                            help="Pub/Sub attribute carrying event time, used for the watermark "
                                 "on Dataflow; event time itself always comes from the payload.")
        parser.add_argument("--id_label",
                            help="Pub/Sub attribute with a unique message id, for Dataflow's "
                                 "source-level deduplication (ignored on the DirectRunner).")
        parser.add_argument("--dead_letter_topic",
                            help="Optional Pub/Sub topic that also receives every rejected "
                                 "message: projects/PROJECT/topics/NAME.")
        add_switch(parser, "--restore_open_windows",
                   "On start, replay accepted events of still-open windows from the events "
                   "table (after a restart without --update, e.g. on the DirectRunner or after "
                   "a drain).")
        parser.add_argument("--run_seconds", type=int, default=0,
                            help="DirectRunner only: stop after this many seconds (0: run until "
                                 "interrupted).")


def build(pipeline: beam.Pipeline, options: StreamingUsageOptions, job_id: str) -> None:
    """Composes the streaming pipeline on `pipeline`."""
    for flag in ("subscription", "meters"):
        if not getattr(options, flag):
            raise ValueError(f"--{flag} is required")
    catalog = load_catalog_anywhere(options.meters)
    window_ns = parse_window(options.window)
    lateness_ns = parse_duration(options.allowed_lateness)
    horizon_ns = (parse_duration(options.dedup_horizon) if options.dedup_horizon
                  else window_ns + lateness_ns + 3600 * NS)
    if horizon_ns < window_ns + lateness_ns:
        raise ValueError("--dedup_horizon must be at least window + allowed lateness")
    target = bigquery_target(options)
    method = options.bigquery_write_method
    bignumeric = {m.key for m in catalog.meters if m.precision == "BIGNUMERIC"}
    runner = options.view_as(StandardOptions).runner
    limits = Limits(now_ns=None, max_future_skew_ns=parse_duration(options.max_future_skew))

    messages = pipeline | "ReadMessages" >> ReadUsageMessages(
        options.subscription, runner, options.timestamp_attribute, options.id_label)
    if options.restore_open_windows:
        replay = pipeline | "ReplayOpenWindows" >> ReplayOpenWindows(target, window_ns,
                                                                    lateness_ns)
        # Live messages wait until the replay has been read (a side input is ready
        # once its bounded input is done): a redelivery of an already accepted event
        # that reached deduplication before its replayed copy would be accepted, and
        # stored, a second time. (No GroupByKey here: the streaming DirectRunner
        # cannot run one on a bounded input.)
        replay_done = replay | "ReplayDone" >> beam.Map(lambda _message: None)
        messages = messages | "AfterReplay" >> beam.Map(
            lambda message, _done: message, beam.pvalue.AsIter(replay_done))
        messages = (messages, replay) | "WithReplay" >> beam.Flatten()
    out = messages | "StreamUsage" >> StreamUsage(
        catalog, limits, window_ns, lateness_ns, options.early_firing_seconds, horizon_ns)

    def write(pcoll, name, table, to_row):
        return (pcoll | f"{name}Rows" >> beam.Map(to_row)
                | f"Write{name}" >> WriteRows(target, table, method))

    write(out["dead_letters"], "DeadLetters", DEAD_LETTER,
          lambda r: rows.dead_letter_row(r, PIPELINE_NAME, job_id))
    if options.dead_letter_topic:
        _ = out["dead_letters"] | "PublishDeadLetters" >> PublishDeadLetters(
            options.dead_letter_topic)
    write(out["accepted"], "Events", EVENTS, lambda e: rows.event_row(e, job_id))
    write(out["duplicates"], "Duplicates", DUPLICATE_EVENTS,
          lambda d: rows.duplicate_row(d, time.time_ns(), job_id))
    write(out["too_late"], "LateEvents", LATE_EVENTS,
          lambda el: rows.late_event_row(el[0], el[1], window_ns, job_id))
    write(out["usage"], "UsagePanes", USAGE_PANES,
          lambda r: rows.usage_pane_row(r, r["meter"] in bignumeric, time.time_ns(), job_id))


class ReplayOpenWindows(beam.PTransform):
    """Accepted events of windows that still accept data, from the `events` table,
    shaped like Pub/Sub messages (position prefixed `replay:`, original ingest time)."""

    def __init__(self, target: BigQueryTarget, window_ns: int, lateness_ns: int):
        super().__init__()
        self._target = target
        self._open_span_s = (window_ns + lateness_ns) // NS

    def expand(self, pbegin):
        sql = (f"SELECT raw, message_id, UNIX_MICROS(ingest_time) AS ingest_us "
               f"FROM `{self._target.table_id(EVENTS)}` "
               f"WHERE time >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL @span SECOND) "
               f"QUALIFY ROW_NUMBER() OVER (PARTITION BY source, id ORDER BY ingest_time) = 1")
        return (pbegin
                | "Query" >> QueryRows(self._target, sql, [("span", "INT64", self._open_span_s)])
                | "AsMessages" >> beam.Map(lambda r: (
                    REPLAYED + (r["message_id"] or ""), (), r["raw"].encode("utf-8"),
                    r["ingest_us"] * 1000, {})))


def new_job_id() -> str:
    return f"stream-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def run(argv: list[str] | None = None):
    """Builds and starts the pipeline; returns the PipelineResult.

    On Dataflow (a Flex Template launch included) it returns at once: the
    launcher must not wait for a streaming job. On the DirectRunner the job
    lives in this process, so it waits until `--run_seconds` or Ctrl-C.
    """
    options = PipelineOptions(argv, streaming=True, save_main_session=False)
    streaming = options.view_as(StreamingUsageOptions)
    block = not runner_supports_pubsub_extras(options.view_as(StandardOptions).runner)
    job_id = options.view_as(beam.options.pipeline_options.GoogleCloudOptions).job_name \
        or new_job_id()
    pipeline = beam.Pipeline(options=options)
    build(pipeline, streaming, job_id)
    result = pipeline.run()
    if block:
        _wait(result, streaming.run_seconds or None)
    return result


def _wait(result, seconds: int | None) -> None:
    """Waits until `seconds` pass or Ctrl-C, then cancels (the DirectRunner cannot drain)."""
    stop = time.monotonic() + seconds if seconds else None
    interrupted = []
    signal.signal(signal.SIGTERM, lambda *_: interrupted.append(True))
    try:
        while not interrupted and (stop is None or time.monotonic() < stop):
            if str(result.state) in ("DONE", "FAILED", "CANCELLED"):
                break
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    print("tallyflow stream: stopping ...", file=sys.stderr)
    result.cancel()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help("tallyflow stream", __doc__, StreamingUsageOptions)
        return 0
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        run(argv)
    except (CatalogError, ValueError, OSError, ExpansionServiceUnavailable) as e:
        print(f"tallyflow stream: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
