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
            -> with --limits: UsageAlerts (period-to-date usage per customer x
               meter x billing period; each threshold once) -> `usage_alerts`
               (and --alert_topic)

Every message ends up in exactly one of `events` (aggregated, unmetered or too
late; too-late ones also in `late_events`), `duplicate_events` or
`dead_letter`. With `--restore_open_windows`, a restarted job first replays the
accepted events of windows still open from `events`, so its panes and its
deduplication state are whole again. On the DirectRunner, whose Pub/Sub source
acknowledges a pull before processing it, it also seeks the subscription back
to the previous job's restart point (a snapshot, `pipelines/restart_points.py`),
so what that job had pulled but not written when it stopped or crashed is
delivered again; what it had written is recognised and not recorded twice.

Run with `tallyflow stream` (DirectRunner, until interrupted or
`--run_seconds`) or `python -m pipelines.streaming_usage` (Flex Template).
"""
from __future__ import annotations

import os
import sys
import threading
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.options import (UsageOptions, add_price_book, add_switch, bigquery_target,
                               load_catalog_anywhere, load_limits_anywhere,
                               load_price_book_anywhere, print_help)
from pipelines.policy import (RUNTIME_FAILURE, CommandFailed, first_line, name_option, quiet_beam,
                              run_command, stop_on_sigterm)
from pipelines.restart_points import SNAPSHOT_SECONDS, RestartPoints
from schemas import names, sql
from schemas.encoding import DEFAULT_MAX_DECOMPRESSED_BYTES
from schemas.events import Limits, Payload
from schemas.tables import (DEAD_LETTER, DUPLICATE_EVENTS, EVENTS, LATE_EVENTS, USAGE_ALERTS,
                            USAGE_PANES)
from schemas.values import NS, format_time, parse_duration, parse_rfc3339, parse_window
from transforms import rows
from transforms.bigquery import (CLIENT_METHOD, WRITE_METHODS, ExpansionServiceUnavailable,
                                 WriteRows)
from transforms.bigquery_target import BigQueryTarget
from transforms.limits import PublishAlerts, RestoreLimitState, UsageAlerts
from transforms.pubsub import (PULL_WAIT_SECONDS, PublishDeadLetters, ReadUsageMessages,
                               bound_direct_pulls)
from transforms.runner import is_dataflow
from transforms.storage_read import ReadQueryStreams, arrow_rows
from transforms.streaming import REPLAYED, StreamUsage

PIPELINE_NAME = "streaming_usage"


class StreamingUsageOptions(UsageOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--subscription", type=name_option(names.pubsub_subscription),
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
        parser.add_argument("--max_decompressed_bytes", type=int,
                            default=DEFAULT_MAX_DECOMPRESSED_BYTES,
                            help="Largest a compressed message (content-encoding gzip or zstd) "
                                 "may decompress to; a larger one is dead-lettered "
                                 "(DECOMPRESSED_TOO_LARGE) with its bytes as received.")
        parser.add_argument("--dead_letter_topic", type=name_option(names.pubsub_topic),
                            help="Optional Pub/Sub topic that also receives every rejected "
                                 "message: projects/PROJECT/topics/NAME.")
        add_switch(parser, "--restore_open_windows",
                   "On start, replay accepted events of still-open windows from the events "
                   "table (after a restart without --update, e.g. on the DirectRunner or after "
                   "a drain); on the DirectRunner also seek the subscription back to the "
                   "previous job's restart point, so nothing it had pulled is lost.")
        parser.add_argument("--replay_since",
                            help="With --restore_open_windows, after the subscription was "
                                 "sought back to a snapshot or time (docs/deploy.md): also "
                                 "restore everything written since this RFC 3339 time (the "
                                 "snapshot's, minus a margin), so redelivered messages are "
                                 "recognised. The DirectRunner sets it from its restart point.")
        parser.add_argument("--replay_margin", default="5m",
                            help="DirectRunner only: a restart point (subscription snapshot) "
                                 "becomes safe once the job has run this long after it; must "
                                 "exceed the longest a pulled message takes to be written "
                                 "(incl. BigQuery write retries, 120 s).")
        parser.add_argument("--limits",
                            help="Usage limits YAML file (local path or gs://; docs/limits.md): "
                                 "alert once per threshold crossing per billing period, to "
                                 "usage_alerts (and --alert_topic). Needs --prices.")
        add_price_book(parser, ": the plans and included quantities --limits refers to")
        parser.add_argument("--alert_topic", type=name_option(names.pubsub_topic),
                            help="Optional Pub/Sub topic that also receives every usage alert: "
                                 "projects/PROJECT/topics/NAME.")
        parser.add_argument("--run_seconds", type=int, default=0,
                            help="DirectRunner only: stop after this many seconds (0: run until "
                                 "interrupted).")
        parser.add_argument("--pull_wait_seconds", type=int, default=PULL_WAIT_SECONDS,
                            help="DirectRunner only: the longest one Pub/Sub pull waits for "
                                 "messages (Beam's own: 30 s). The DirectRunner runs every step "
                                 "on one thread, so early panes and alerts wait behind an idle "
                                 "pull.")


def build(pipeline: beam.Pipeline, options: StreamingUsageOptions, job_id: str,
          replay_since_ns: int | None = None) -> None:
    """Composes the streaming pipeline on `pipeline`.

    `replay_since_ns`: when the subscription was sought back to (a restart); the
    restore then also covers every event, duplicate, dead letter and too-late
    record written since, whatever its window, as the seek redelivers them all.
    """
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
    if options.max_decompressed_bytes < 1:
        raise ValueError("--max_decompressed_bytes must be at least 1")
    limits = Limits(now_ns=None, max_future_skew_ns=parse_duration(options.max_future_skew),
                    max_decompressed_bytes=options.max_decompressed_bytes)

    messages = pipeline | "ReadMessages" >> ReadUsageMessages(
        options.subscription, runner, options.timestamp_attribute, options.id_label)
    recorded = None
    if options.restore_open_windows:
        replay = pipeline | "ReplayOpenWindows" >> ReplayOpenWindows(
            target, window_ns, lateness_ns, horizon_ns, replay_since_ns)
        # Live messages wait until the replay has been read (a side input is ready
        # once its bounded input is done): a redelivery of an already accepted event
        # that reached deduplication before its replayed copy would be accepted, and
        # stored, a second time. (No GroupByKey here: the streaming DirectRunner
        # cannot run one on a bounded input.)
        replay_done = replay | "ReplayDone" >> beam.Map(lambda _message: None)
        messages = messages | "AfterReplay" >> beam.Map(
            lambda message, _done: message, beam.pvalue.AsIter(replay_done))
        messages = (messages, replay) | "WithReplay" >> beam.Flatten()
        if replay_since_ns is not None:
            recorded = pipeline | "RecordedSince" >> RecordedSince(target, replay_since_ns)
    out = messages | "StreamUsage" >> StreamUsage(
        catalog, limits, window_ns, lateness_ns, options.early_firing_seconds, horizon_ns,
        recorded)

    def write(pcoll, name, table, to_row):
        return pcoll | f"Write{name}" >> WriteRows(target, table, method, to_row=to_row)

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
    if options.limits:
        alerts = _usage_alerts(pipeline, options, catalog, target, lateness_ns, out["usage"])
        write(alerts, "UsageAlerts", USAGE_ALERTS, lambda a: rows.usage_alert_row(a, job_id))
        if options.alert_topic:
            _ = alerts | "PublishAlerts" >> PublishAlerts(options.alert_topic)


def _usage_alerts(pipeline, options, catalog, target, lateness_ns, usage):
    """The alerts of `--limits` (restored from BigQuery with --restore_open_windows)."""
    if not options.prices:
        raise ValueError("--prices is required with --limits")
    prices = load_price_book_anywhere(options.prices)
    book = load_limits_anywhere(options.limits, catalog, prices)
    restored = None
    if options.restore_open_windows:
        restored = pipeline | "RestoreLimitState" >> RestoreLimitState(target, book, prices,
                                                                       lateness_ns)
    return usage | "UsageAlerts" >> UsageAlerts(book, prices, catalog, lateness_ns, restored)


class ReplayOpenWindows(beam.PTransform):
    """Accepted events of windows that still accept data, and (`since_ns`) every event
    ingested since then within the deduplication horizon, from the `events` table,
    shaped like Pub/Sub messages (position prefixed `replay:`, original ingest time).

    Older events are left out: their identities would be forgotten at once (the
    horizon's timer has passed), and the recompute is the authority there.
    """

    def __init__(self, target: BigQueryTarget, window_ns: int, lateness_ns: int,
                 horizon_ns: int, since_ns: int | None = None):
        super().__init__()
        self._target = target
        self._open_span_s = (window_ns + lateness_ns) // NS
        self._horizon_s = horizon_ns // NS
        self._since_us = -1 if since_ns is None else since_ns // 1000

    def expand(self, pbegin):
        params = [("span", "INT64", self._open_span_s), ("horizon", "INT64", self._horizon_s),
                  ("since", "INT64", self._since_us)]
        return (pbegin
                | "ReadStreams" >> ReadQueryStreams(
                    self._target, self._target.sql(sql.REPLAY_OPEN_EVENTS), params)
                | "Rows" >> beam.FlatMap(arrow_rows)
                | "AsMessages" >> beam.Map(lambda r: Payload(
                    REPLAYED + (r["message_id"] or ""), (), r["raw"].encode("utf-8"),
                    r["ingest_us"] * 1000)))


class RecordedSince(beam.PTransform):
    """`recorded_key` tuples (transforms/streaming.py) of the dead letters, duplicates
    and too-late events written since `since_ns`: the seek redelivers their messages,
    which must not be recorded twice."""

    def __init__(self, target: BigQueryTarget, since_ns: int):
        super().__init__()
        self._target = target
        self._since_us = since_ns // 1000

    def expand(self, pbegin):
        return (pbegin
                | "ReadStreams" >> ReadQueryStreams(self._target,
                                                    self._target.sql(sql.RECORDED_SINCE),
                                                    [("since", "INT64", self._since_us)])
                | "Rows" >> beam.FlatMap(arrow_rows)
                | "AsKeys" >> beam.Map(lambda r: (r["t"], r["a"], r["b"]) if r["b"]
                                       else (r["t"], r["a"])))


STOP_SECONDS = 45  # a cancel waits for a pull (--pull_wait_seconds); longer: Pub/Sub is gone
REPLAY_SLACK_NS = 60 * NS  # restore a minute more than the restart point, against clock steps


class StreamFailed(CommandFailed):
    """A DirectRunner job failed, or did not stop within STOP_SECONDS."""


def run(argv: list[str] | None = None):
    """Builds and starts the pipeline; returns the PipelineResult (None: stopped by
    SIGTERM before it started).

    On Dataflow (a Flex Template launch included) it returns at once: the
    launcher must not wait for a streaming job. On the DirectRunner the job
    lives in this process: it seeks back to the last restart point (with
    `--restore_open_windows`), takes restart points while it runs, and waits
    until `--run_seconds`, SIGTERM or Ctrl-C.
    """
    options = PipelineOptions(argv, streaming=True, save_main_session=False)
    streaming = options.view_as(StreamingUsageOptions)
    block = not is_dataflow(options.view_as(StandardOptions).runner)
    job_id = options.view_as(beam.options.pipeline_options.GoogleCloudOptions).job_name \
        or names.new_run_id("stream")
    since_ns = parse_rfc3339(streaming.replay_since) if streaming.replay_since else None
    stopping = stop_on_sigterm() if block else None  # a stop during the start is clean too
    points = None
    if block and streaming.subscription:
        points = RestartPoints(streaming.subscription,
                               parse_duration(streaming.replay_margin) // 1_000_000)
        if streaming.restore_open_windows:
            since_ns = min((t for t in (since_ns, _seek_back(points)) if t is not None),
                           default=None)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, streaming, job_id, since_ns)
    if not block:
        return pipeline.run()
    if stopping.is_set():
        print("tallyflow stream: stopped before the job started", file=sys.stderr)
        return None
    if streaming.pull_wait_seconds < 1:
        raise ValueError("--pull_wait_seconds must be at least 1")
    bound_direct_pulls(streaming.pull_wait_seconds)
    start_ms = time.time_ns() // 1_000_000
    points.take(start_ms, start_ms)  # before the first pull: a crash from here on is replayed
    result = pipeline.run()
    _wait(result, streaming.run_seconds or None, points, start_ms, stopping)
    return result


def _seek_back(points: RestartPoints) -> int | None:
    """Seeks to the last job's restart point; the ns to restore recorded rows from."""
    point = points.seek_back()
    if point is None:
        print("tallyflow stream: no restart point for this subscription, nothing to replay "
              "from Pub/Sub", file=sys.stderr)
        return None
    print(f"tallyflow stream: replaying Pub/Sub from the restart point of "
          f"{format_time(point.taken_ms * 1_000_000)}", file=sys.stderr)
    return point.taken_ms * 1_000_000 - REPLAY_SLACK_NS


def _wait(result, seconds: int | None, points: RestartPoints, start_ms: int,
          stopping: threading.Event) -> None:
    """Takes restart points until `seconds` pass, SIGTERM, Ctrl-C or a failure; then
    cancels (the DirectRunner cannot drain), bounded by STOP_SECONDS."""
    failure = []
    watcher = threading.Thread(target=_watch, args=(result, failure), daemon=True)
    watcher.start()
    stop = time.monotonic() + seconds if seconds else None
    next_point = time.monotonic() + SNAPSHOT_SECONDS
    try:
        while not stopping.is_set() and watcher.is_alive() and (
                stop is None or time.monotonic() < stop):
            if time.monotonic() >= next_point:
                next_point += SNAPSHOT_SECONDS
                _take_point(points, start_ms)
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    print("tallyflow stream: stopping ...", file=sys.stderr)
    cancelled = threading.Thread(target=result.cancel, daemon=True)
    cancelled.start()
    cancelled.join(STOP_SECONDS)
    if failure:
        raise StreamFailed(f"the job failed: {type(failure[0]).__name__}: "
                           f"{first_line(failure[0])}")
    if cancelled.is_alive():
        raise StreamFailed(f"the job did not stop within {STOP_SECONDS} s (is Pub/Sub "
                           f"reachable?); a start with --restore_open_windows replays what "
                           f"it had pulled")
    print("tallyflow stream: stopped", file=sys.stderr)


def _watch(result, failure: list) -> None:
    """Blocks until the job ends; the DirectRunner only reports a failure this way."""
    try:
        result.wait_until_finish()
    except Exception as e:  # noqa: BLE001 - whatever failed the job is reported by _wait
        failure.append(e)


def _take_point(points: RestartPoints, start_ms: int) -> None:
    """A restart point now; a failure only delays the next one (the older ones stay)."""
    try:
        points.take(start_ms, time.time_ns() // 1_000_000)
    except Exception as e:  # noqa: BLE001 - Pub/Sub unreachable: keep running, retry later
        print(f"tallyflow stream: could not take a restart point: {type(e).__name__}: "
              f"{first_line(e)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help("tallyflow stream", __doc__, StreamingUsageOptions)
        return 0
    quiet_beam()

    def stream() -> None:
        run(argv)  # returns when the job stops (DirectRunner) or is submitted (Dataflow)

    code = run_command("tallyflow stream", stream, usage_errors=(ExpansionServiceUnavailable,))
    if code == RUNTIME_FAILURE:
        sys.stderr.flush()
        os._exit(code)  # the runner's and clients' threads may still hang on a dead service
    return code


if __name__ == "__main__":
    sys.exit(main())
