"""Event-time semantics of the streaming core, proven with TestStream.

`StreamUsage` is the production pipeline minus Pub/Sub and BigQuery. TestStream
drives the watermark and processing time; each payload carries the ingest time
a real source would stamp, consistent with that watermark (the watermark never
runs ahead of ingest time).
"""
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to

from schemas.catalog import parse_catalog
from schemas.events import Limits, Payload
from schemas.values import parse_rfc3339
from transforms.aggregate import event_timestamp
from transforms.streaming import REPLAYED, StreamUsage
from transforms.windowing import closing_ns

NS = 10 ** 9
GAME = parse_catalog({"meters": [
    {"key": "score", "event_type": "game.score", "aggregation": "SUM",
     "value_property": "$.points"},
    {"key": "plays", "event_type": "game.score", "aggregation": "COUNT"},
]})


def at(clock: str) -> int:
    """12:00:26 -> ns on the test day."""
    return parse_rfc3339(f"2026-11-02T{clock}Z")


class Feed:
    """Builds a TestStream of Pub/Sub-shaped payloads with a consistent ingest clock."""

    def __init__(self, start: str, watermark: str | None = None):
        self.now = at(start)
        self.stream = TestStream().advance_watermark_to(event_timestamp(at(watermark or start)))
        self.messages = 0

    def send(self, event_id: str, points, event_time: str, *, raw: bytes | None = None,
             message_id: str | None = None):
        """One message; `message_id` gives it an id of its own (a redelivery, a replay)."""
        self.messages += 1
        doc = {"specversion": "1.0", "id": event_id, "source": "//game", "type": "game.score",
               "subject": "team-a", "time": f"2026-11-02T{event_time}Z",
               "data": {"points": points}}
        payload = raw if raw is not None else json.dumps(doc).encode()
        self.stream.add_elements([Payload(message_id or f"msg-{self.messages}", (), payload,
                                   self.now, {})],
                                 event_timestamp=event_timestamp(self.now))
        return self

    def wait(self, seconds: int):
        """Processing time passes (fires early panes); the ingest clock follows."""
        if seconds:
            self.now += seconds * NS
            self.stream.advance_processing_time(seconds)
        return self

    def nanoseconds(self, n: int):
        """The ingest clock moves on by n ns (no timer fires)."""
        self.now += n
        return self

    def watermark(self, clock: str):
        self.stream.advance_watermark_to(event_timestamp(at(clock)))
        return self


def run(feed: Feed, window_s: int, lateness_s: int, early_s: int = 60, recorded=None):
    """Runs StreamUsage on the feed; returns the asserted-on PCollections.

    `recorded`: `recorded_key` tuples of rows an earlier job wrote."""
    feed.stream.advance_watermark_to_infinity()
    pipeline = TestPipeline(options=StandardOptions(streaming=True))
    written = None if recorded is None else pipeline | "Recorded" >> beam.Create(recorded)
    out = pipeline | feed.stream | StreamUsage(
        GAME, Limits(now_ns=None), window_s * NS, lateness_s * NS, early_s,
        (window_s + lateness_s) * NS, written)
    return pipeline, out


def panes(usage, meter="score"):
    return (usage
            | f"Only{meter}" >> beam.Filter(lambda r, m=meter: r["meter"] == m)
            | f"Pane{meter}" >> beam.Map(lambda r: (
                r["window_start"][11:19], r["value"], r["event_count"], r["pane_timing"],
                r["pane_index"], r["is_final"])))


def test_early_on_time_late_and_too_late_panes():
    feed = (Feed("12:00:00")
            .send("a", 5, "12:00:26").send("b", "2.5", "12:01:10")
            .wait(61)                                  # early pane: 7.5
            .send("a", 5, "12:00:26")                  # redelivered copy: no change
            .send("c", "-1", "12:01:40")               # invalid: dead-lettered
            .watermark("12:02:00")                     # on-time pane: 7.5
            .wait(60).send("d", 9, "12:01:30")        # late, within lateness: 16.5
            .watermark("12:13:00").wait(700)
            .send("e", 4, "12:00:59")                  # past 12:02 + 10 min: too late
            .watermark("12:20:00"))
    pipeline, out = run(feed, window_s=120, lateness_s=600)
    with pipeline:
        assert_that(panes(out["usage"]), equal_to([
            ("12:00:00", "7.5", 2, "EARLY", 0, False),
            ("12:00:00", "7.5", 2, "ON_TIME", 1, False),
            ("12:00:00", "16.5", 3, "LATE", 2, False),
            # no closing pane: the Python DirectRunner ignores EMIT_ALWAYS (beam#20165);
            # Dataflow emits one, is_final=True, when the window expires
        ]), label="panes")
        assert_that(out["too_late"] | beam.Map(lambda late: (late[0].id, late[1] > 0)),
                    equal_to([("e", True)]), label="too late")
        assert_that(out["duplicates"] | beam.Map(lambda d: (d.id, d.kept_position)),
                    equal_to([("a", "msg-1")]), label="duplicates")
        assert_that(out["dead_letters"] | beam.Map(lambda r: r.error_code),
                    equal_to(["VALUE_NEGATIVE"]), label="dead letters")
        # too-late events are still accepted (stored for recompute), once
        assert_that(out["accepted"] | beam.Map(lambda e: e.id),
                    equal_to(["a", "b", "d", "e"]), label="accepted")


def test_every_message_is_accounted_for_once():
    feed = Feed("12:00:00")
    for n in range(20):
        feed.send(f"id-{n % 12}", n, f"12:0{n % 4}:{10 + n:02d}")
    feed.send("bad", 1, "12:00:00", raw=b"{oops").send("batch", 1, "12:00:00", raw=b"[]")
    feed.watermark("12:30:00").wait(2000).send("late", 1, "12:00:05")
    pipeline, out = run(feed, window_s=120, lateness_s=600)
    with pipeline:
        ids = lambda pcoll, label: pcoll | label >> beam.Map(lambda x: x.id)  # noqa: E731
        # 20 sends over 12 identities, 1 too-late event and 2 bad payloads: 23 records
        accepted = [f"id-{n}" for n in range(12)] + ["late"]
        duplicates = [f"id-{n % 12}" for n in range(12, 20)]
        assert len(accepted) + len(duplicates) + 2 == feed.messages
        assert_that(ids(out["accepted"], "a"), equal_to(accepted), label="accepted")
        assert_that(ids(out["duplicates"], "d"), equal_to(duplicates), label="duplicates")
        assert_that(out["dead_letters"] | beam.Map(lambda r: r.error_code),
                    equal_to(["MALFORMED_JSON", "EMPTY_BATCH"]), label="dead")
        assert_that(out["too_late"] | beam.Map(lambda late: late[0].id), equal_to(["late"]),
                    label="too late")


def test_streaming_systems_chapter_2_nine_scores():
    """Streaming Systems ch. 2: nine scores summed in 2-minute event-time windows with a
    heuristic watermark, early panes every minute of processing time, on-time panes and
    late panes. The heuristic watermark passes 12:02 before the 9 (event time 12:01:26,
    processed at 12:08:19) arrives, so that window gets a late pane."""
    scores = [  # (score, event time, processing time)
        (5, "12:00:26", "12:05:19"), (7, "12:02:26", "12:05:39"),
        (3, "12:03:39", "12:06:13"), (4, "12:04:19", "12:06:39"),
        (3, "12:06:39", "12:07:06"), (8, "12:03:06", "12:07:19"),
        (3, "12:07:26", "12:07:39"), (9, "12:01:26", "12:08:19"),
        (1, "12:07:46", "12:08:39"),
    ]
    watermark = {  # the heuristic watermark after the element processed at this time
        "12:06:13": "12:02:00", "12:06:39": "12:03:00", "12:07:19": "12:04:30",
        "12:07:39": "12:06:00", "12:08:39": "12:08:00"}
    feed = Feed("12:05:00", watermark="12:00:00")
    for n, (score, event_time, processed) in enumerate(scores):
        feed.wait((at(processed) - feed.now) // NS)
        feed.send(f"s{n}", score, event_time)
        if processed in watermark:
            feed.watermark(watermark[processed])
    feed.wait(60)
    pipeline, out = run(feed, window_s=120, lateness_s=3600)
    with pipeline:
        got = (out["usage"]
               | beam.Filter(lambda r: r["meter"] == "score")
               | beam.Map(lambda r: (r["window_start"][11:16], r["pane_index"], r["value"],
                                     r["pane_timing"])))
        assert_that(got, equal_to([
            # 5 (12:05:19): the watermark passes 12:02 at 12:06:13, before the early
            # timer (12:06:19): on time 5; the 9 comes after the watermark: late 14
            ("12:00", 0, "5", "ON_TIME"), ("12:00", 1, "14", "LATE"),
            # 7 (12:05:39) starts the early timer: at 12:06:39 it fires 7 + 3;
            # the 8 arrives at 12:07:19, before the watermark passes 12:04: on time 18
            ("12:02", 0, "10", "EARLY"), ("12:02", 1, "18", "ON_TIME"),
            # 4 (12:06:39): early at 12:07:39, on time when the watermark reaches 12:06
            ("12:04", 0, "4", "EARLY"), ("12:04", 1, "4", "ON_TIME"),
            # 3 (12:07:06) + 3 (12:07:39): early at 12:08:19 (6); the 1 makes on time 7
            ("12:06", 0, "6", "EARLY"), ("12:06", 1, "7", "ON_TIME"),
        ]))


def test_a_replay_of_the_same_message_is_neither_counted_nor_a_duplicate():
    feed = (Feed("12:00:00")
            # what a restored job replays from `events` (stored by an earlier job from m0)
            .send("a", 5, "12:00:26", message_id="replay:m0")
            .send("a", 5, "12:00:26", message_id="m0")   # m0 again, after the seek: a replay
            .send("b", 2, "12:00:30", message_id="m1")   # pulled but never written: new
            .send("b", 2, "12:00:30", message_id="m1")   # Pub/Sub redelivers m1: a replay
            .send("a", 5, "12:00:26", message_id="m2")   # another message: a duplicate
            .send("b", 9, "12:00:30", message_id="m3")   # another message, conflicting
            .watermark("12:02:00"))
    pipeline, out = run(feed, window_s=120, lateness_s=600)
    with pipeline:
        assert_that(panes(out["usage"]), equal_to([("12:00:00", "7", 2, "ON_TIME", 0, False)]),
                    label="panes")
        assert_that(out["accepted"] | beam.Map(lambda e: (e.id, e.position)),
                    equal_to([("b", "m1")]), label="accepted")
        assert_that(out["duplicates"] | beam.Map(lambda d: (d.id, d.position, d.kept_position,
                                                            d.conflict)),
                    equal_to([("a", "m2", "replay:m0", False), ("b", "m3", "m1", True)]),
                    label="duplicates")


def test_what_an_earlier_job_recorded_is_not_recorded_again():
    feed = (Feed("12:30:00", watermark="12:00:00")
            .send("a", 5, "12:29:50", message_id="replay:m0")
            .send("a", 5, "12:29:50", message_id="m1")    # duplicate, recorded before the stop
            .send("a", 5, "12:29:50", message_id="m2")    # duplicate, pulled but not written
            .send("x", 1, "12:29:50", raw=b"{oops", message_id="m3")   # recorded dead letter
            .send("y", 1, "12:29:50", raw=b"[]", message_id="m4")      # dead letter, not yet
            # too-late events stored by the earlier job: one has its late_events row
            .send("old", 1, "12:00:05", message_id="replay:m5")
            .send("older", 1, "12:00:06", message_id="replay:m6")
            .watermark("12:31:00"))
    recorded = [("duplicate_events", "m1"), ("dead_letter", "m3"),
                ("late_events", "//game", "old")]
    pipeline, out = run(feed, window_s=120, lateness_s=600, recorded=recorded)
    with pipeline:
        assert_that(out["duplicates"] | beam.Map(lambda d: d.position), equal_to(["m2"]),
                    label="duplicates")
        assert_that(out["dead_letters"] | beam.Map(lambda r: r.position), equal_to(["m4"]),
                    label="dead letters")
        assert_that(out["too_late"] | beam.Map(lambda late: late[0].id), equal_to(["older"]),
                    label="too late")
        assert_that(out["accepted"], equal_to([]), label="accepted")


def test_a_window_closes_at_its_end_plus_allowed_lateness():
    window, lateness = 120 * NS, 600 * NS
    for time_ns in (at("12:00:00"), at("12:01:00"), at("12:02:00") - 1):
        assert closing_ns(time_ns, window, lateness) == at("12:12:00")
    assert closing_ns(at("12:02:00"), window, lateness) == at("12:14:00")
    assert closing_ns(at("12:02:00"), window, 0) == at("12:04:00")


def test_window_edges_and_the_last_nanosecond_of_allowed_lateness():
    """[12:00, 12:02) with 10 min of lateness closes at 12:12:00 exactly: an event ingested
    then is in time (a late pane), one ingested 1 ns later is too late."""
    feed = (Feed("12:00:00")
            .send("first", 1, "12:00:00")                # the window's first instant
            .send("last", 2, "12:01:59.999999999")       # its last nanosecond
            .send("next", 4, "12:02:00")                 # the next window's first instant
            .watermark("12:02:00")                       # on time: 3 for 12:00
            .wait(720)                                   # early: 4 for 12:02; ingest clock:
                                                         # 12:12:00.000000000
            .watermark("12:12:00")                       # Beam still takes 12:00's data
            .send("closing", 8, "12:01:00")              # in time, at the closing instant
            .nanoseconds(1)
            .send("after", 16, "12:01:30")               # 1 ns past closing: too late
            .watermark("12:30:00"))
    pipeline, out = run(feed, window_s=120, lateness_s=600)
    with pipeline:
        assert_that(panes(out["usage"]), equal_to([
            ("12:00:00", "3", 2, "ON_TIME", 0, False),
            ("12:00:00", "11", 3, "LATE", 1, False),
            ("12:02:00", "4", 1, "EARLY", 0, False),
            ("12:02:00", "4", 1, "ON_TIME", 1, False),
        ]), label="panes")
        assert_that(out["too_late"] | beam.Map(lambda late: (late[0].id, late[1])),
                    equal_to([("after", 1)]), label="too late")
        assert_that(out["accepted"] | beam.Map(lambda e: e.id),
                    equal_to(["first", "last", "next", "closing", "after"]), label="accepted")


def test_replayed_events_feed_dedup_and_usage_but_are_not_recorded_again():
    """A restored job replays accepted events of open windows (positions `replay:`): they
    were recorded by the job before, so they count in panes and deduplicate later copies,
    but appear in none of accepted, duplicates or too_late."""
    replayed = lambda n: f"{REPLAYED}m{n}"  # noqa: E731
    feed = (Feed("12:00:00")
            .send("r1", 5, "12:00:10", message_id=replayed(1))
            .send("r2", 7, "12:00:20", message_id=replayed(2))
            .send("r1", 5, "12:00:10")                   # live redelivery: a duplicate
            .send("live", 1, "12:00:30")
            .send("live", 1, "12:00:30", message_id=replayed(3))  # replayed after its live copy
            .watermark("12:02:00")                       # on time: 5 + 7 + 1
            .watermark("12:13:00").wait(800)             # 12:00's window has closed
            .send("old", 3, "12:00:40", message_id=replayed(4))   # was too late before too
            .send("tardy", 9, "12:00:50")                # live and too late
            .watermark("12:30:00"))
    pipeline, out = run(feed, window_s=120, lateness_s=600)
    with pipeline:
        assert_that(panes(out["usage"]), equal_to([("12:00:00", "13", 3, "ON_TIME", 0, False)]),
                    label="panes")
        assert_that(out["accepted"] | beam.Map(lambda e: e.id), equal_to(["live", "tardy"]),
                    label="accepted")
        assert_that(out["duplicates"] | beam.Map(lambda d: (d.id, d.position, d.kept_position)),
                    equal_to([("r1", "msg-3", replayed(1))]), label="duplicates")
        assert_that(out["too_late"] | beam.Map(lambda late: late[0].id), equal_to(["tardy"]),
                    label="too late")


def test_step_names_are_stable_for_updating_a_running_job():
    """Dataflow's `--update` carries state (deduplication, open windows) over to the new
    job by step name: renaming one of these steps drops its state, unless mapped."""
    pipeline = beam.Pipeline(options=StandardOptions(streaming=True))
    _ = (pipeline | beam.Create([]) | "StreamUsage" >> StreamUsage(
        GAME, Limits(now_ns=None), 60 * NS, 600 * NS, 60, 3600 * NS))
    names = {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}
    assert {f"StreamUsage/{step}" for step in (
        "AssignEventTime/EventTime", "Deduplicate/KeyByIdentity",
        "Deduplicate/FirstCopyWithinHorizon", "RouteTooLate/ByIngestTime",
        "WindowUsage/FixedWindows")} <= names
