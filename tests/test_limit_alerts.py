"""Usage alerts from the streaming panes (transforms/limits.py), proven with TestStream.

The production core (`StreamUsage`) feeds `UsageAlerts`, as in the pipeline. The
plan includes 10 points of `score` a month; thresholds 50%, 80% and 100% are
5, 8 and 10 points. Expected alerts are worked out by hand from the events.
"""
import json
import re
from decimal import Decimal

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp

from pipelines import streaming_usage
from schemas.catalog import parse_catalog
from schemas.limits import Level, alert_id, parse_limits
from schemas.pricing import parse_price_book
from schemas.values import format_time, parse_rfc3339
from tallyflow import examples
from tests.test_streaming import GAME, NS, Feed, run
from transforms.aggregate import event_timestamp
from transforms.dedup import REPLAYED
from transforms.limits import (PANE, RESTORED_ALERT, RESTORED_WINDOW, CrossThresholds,
                               UsageAlerts, WindowChanges, alert_message)

PRICES = parse_price_book({
    "plans": [{"id": "game", "currency": "USD", "versions": [{
        "version": 1, "starting_at": "2026-01-01T00:00:00Z",
        "prices": [{"id": "score", "meter": "score", "model": "per_unit", "unit_amount": 1,
                    "free_units": 10}]}]}],
    "assignments": [{"subject": "team-a", "plan": "game", "starting_at": "2026-01-01T00:00:00Z"}],
})
BOOK = parse_limits({"limits": [{"plan": "game", "meter": "score",
                                 "thresholds": ["100%", "50%", "80%"]}]}, GAME, PRICES)
NOVEMBER = "2026-11-01T00:00:00Z"
WINDOW_S, LATENESS_S = 60, 600


def alerts_of(feed, windows=(), alerts=()):
    """The alerts of the feed's panes; `windows` and `alerts`: what a restore seeds."""
    pipeline, out = run(feed, window_s=WINDOW_S, lateness_s=LATENESS_S)
    seeds = None
    if windows or alerts:
        seeds = {"windows": pipeline | "Windows" >> beam.Create(list(windows)),
                 "alerts": pipeline | "Alerts" >> beam.Create(list(alerts))}
    alerts = out["usage"] | UsageAlerts(BOOK, PRICES, GAME, LATENESS_S * NS, seeds)
    return pipeline, alerts


def summary(alerts):
    """What a crossing must say, minus the processing time it was seen at."""
    return alerts | "Summary" >> beam.Map(lambda a: (
        a["period_start"], a["threshold"], a["threshold_quantity"], a["value"],
        a["window_start"][11:19], a["pane_timing"], a["pane_index"]))


def test_early_on_time_and_late_panes_and_duplicates_cross_each_threshold_once():
    feed = (Feed("12:00:00")
            .send("a", 3, "12:00:10").send("b", 3, "12:00:20")
            .wait(61)                                   # early pane of 12:00: 6 -> 50%
            .send("a", 3, "12:00:10")                   # a redelivery: no new pane value
            .send("a", 3, "12:00:10", message_id="m-a")  # a duplicate event: not counted
            .watermark("12:01:00")                      # on-time pane: still 6
            .wait(60).send("c", 3, "12:00:30")          # late pane: 9 -> 80%
            .send("d", 1, "12:01:10")                   # 12:01 window: 9 + 1 -> 100%
            .watermark("12:02:00")                      # on time, 10: no new crossing
            .wait(60).send("e", 5, "12:02:10")          # 15: every threshold is done
            .watermark("12:30:00"))
    pipeline, alerts = alerts_of(feed)
    with pipeline:
        assert_that(summary(alerts), equal_to([
            (NOVEMBER, "50%", "5", "6", "12:00:00", "EARLY", 0),
            (NOVEMBER, "80%", "8", "9", "12:00:00", "LATE", 2),
            (NOVEMBER, "100%", "10", "10", "12:01:00", "ON_TIME", 0),
        ]))


def test_one_pane_jumping_every_threshold_alerts_each_with_its_own_id():
    feed = Feed("12:00:00").send("big", 12, "12:00:10").watermark("12:30:00")
    pipeline, alerts = alerts_of(feed)
    with pipeline:
        assert_that(summary(alerts), equal_to([
            (NOVEMBER, label, quantity, "12", "12:00:00", "ON_TIME", 0)
            for label, quantity in (("50%", "5"), ("80%", "8"), ("100%", "10"))]),
            label="alerts")
        assert_that(alerts | "Ids" >> beam.Map(lambda a: a["alert_id"]), equal_to([
            alert_id("team-a", "score", NOVEMBER, label) for label in ("50%", "80%", "100%")]),
            label="ids")


def send_at(feed: Feed, event_id: str, points, time: str) -> Feed:
    """An event at a full RFC 3339 time (Feed's own are all on 2026-11-02)."""
    doc = {"specversion": "1.0", "id": event_id, "source": "//game", "type": "game.score",
           "subject": "team-a", "time": time, "data": {"points": points}}
    return feed.send(event_id, points, "00:00:00", raw=json.dumps(doc).encode())


def test_the_month_boundary_starts_a_new_period_with_its_own_thresholds():
    feed = Feed("00:00:00")
    feed.nanoseconds(parse_rfc3339("2026-11-30T23:58:00Z") - feed.now)
    feed.stream.advance_watermark_to(event_timestamp(feed.now))
    send_at(feed, "nov", 4, "2026-11-30T23:58:30Z")
    send_at(feed, "nov2", 2, "2026-11-30T23:59:59.999999999Z")  # Nov: 6 -> 50%
    feed.nanoseconds(150 * NS)
    send_at(feed, "dec", 4, "2026-12-01T00:00:00Z")  # Dec: 4, Nov's 6 does not count
    feed.stream.advance_watermark_to(event_timestamp(parse_rfc3339("2026-12-01T00:01:00Z")))
    feed.wait(60)
    send_at(feed, "dec2", 1, "2026-12-01T00:01:30Z")  # Dec: 5 -> 50%
    feed.stream.advance_watermark_to(event_timestamp(parse_rfc3339("2026-12-01T00:30:00Z")))
    pipeline, alerts = alerts_of(feed)
    with pipeline:
        assert_that(alerts | beam.Map(lambda a: (a["period_start"], a["period_end"],
                                                 a["threshold"], a["value"],
                                                 a["window_start"])),
                    equal_to([
                        (NOVEMBER, "2026-12-01T00:00:00Z", "50%", "6", "2026-11-30T23:59:00Z"),
                        ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z", "50%", "5",
                         "2026-12-01T00:01:00Z")]))


def test_a_restored_job_neither_realerts_nor_counts_a_window_twice():
    """After a restart: 50% was alerted by the old job, a closed window of the period had
    4, and the open 12:00 window had 2 in the old job's last pane. The replayed event
    (its 2) and a live one of 3 make the open window 5 and the period 9: 80% only."""
    period = ("team-a", "score", NOVEMBER)
    end_ns = parse_rfc3339("2026-12-01T00:00:00Z")
    windows = [(("team-a", "score", "{}", f"2026-11-02T{hour}:00:00Z"),
                (RESTORED_WINDOW, Decimal(value), period, end_ns))
               for hour, value in (("09", 4), ("12", 2))]
    feed = (Feed("12:00:30")
            .send("old", 2, "12:00:05", message_id=f"{REPLAYED}m0")
            .send("old", 2, "12:00:05", message_id="m0")   # the seek redelivers it: a replay
            .send("new", 3, "12:00:20")
            .watermark("12:30:00"))
    pipeline, alerts = alerts_of(feed, windows, [(period, (RESTORED_ALERT, "50%"))])
    with pipeline:
        assert_that(summary(alerts), equal_to([
            (NOVEMBER, "80%", "8", "9", "12:00:00", "ON_TIME", 0)]))


class Cell:
    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


class Timer:
    def __init__(self):
        self.at = None

    def set(self, timestamp):
        self.at = timestamp


def pane(window_start: str, index: int, value: str, timing: str = "EARLY",
         meter: str = "score") -> dict:
    return {"subject": "team-a", "meter": meter, "dimensions": "{}",
            "window_start": window_start, "window_end": format_time(
                parse_rfc3339(window_start) + WINDOW_S * NS),
            "value": value,
            "event_count": 1, "fingerprint": "f", "pane_timing": timing, "pane_index": index,
            "is_final": False}


class Steps:
    """WindowChanges then CrossThresholds called as functions, their state in memory."""

    def __init__(self, catalog, meter: str, thresholds):
        self.changes = WindowChanges(catalog, LATENESS_S * NS)
        self.crossings = CrossThresholds(catalog, LATENESS_S * NS)
        self.latest, self.usage, self.alerted, self.timer = {}, Cell(), Cell(), Timer()
        self.levels = tuple(Level(label, Decimal(q)) for label, q in thresholds)
        self.end_ns = parse_rfc3339("2026-12-01T00:00:00Z")
        self.key = ("team-a", meter, NOVEMBER)

    def feed(self, row) -> list[str]:
        """The thresholds the pane alerts, in the order they come out."""
        window_key = ("team-a", row["meter"], "{}", row["window_start"])
        out = self.changes.process((window_key, (PANE, row, self.levels, self.key,
                                                 self.end_ns)),
                                   self.latest.setdefault(row["window_start"], Cell()), Timer())
        return [a["threshold"] for element in out
                for a in self.crossings.process(element, self.usage, self.alerted, self.timer)]


def test_crossings_come_out_in_threshold_order_and_duplicate_panes_change_nothing():
    steps = Steps(GAME, "score", (("a", 1), ("b", 2), ("c", 3), ("d", 40)))
    assert steps.feed(pane("2026-11-02T12:00:00Z", 0, "3")) == ["a", "b", "c"]
    assert steps.feed(pane("2026-11-02T12:00:00Z", 0, "3")) == []        # the same pane again
    assert steps.feed(pane("2026-11-02T12:00:00Z", 2, "39", "LATE")) == []
    assert steps.feed(pane("2026-11-02T12:00:00Z", 1, "50")) == []       # an older pane, late
    assert steps.usage.read() == 39
    assert steps.feed(pane("2026-11-02T12:01:00Z", 0, "1")) == ["d"]     # 39 + 1
    assert steps.timer.at == Timestamp(micros=(steps.end_ns + LATENESS_S * NS) // 1000)
    steps.crossings.forget(steps.usage, steps.alerted)
    assert steps.usage.read() is None and steps.alerted.read() is None


def test_a_max_meter_s_period_value_is_its_highest_window():
    catalog = parse_catalog({"meters": [{"key": "peak", "event_type": "gauge",
                                         "aggregation": "MAX", "value_property": "$.n"}]})
    steps = Steps(catalog, "peak", (("6", 6), ("10", 10)))
    assert steps.feed(pane("2026-11-02T12:00:00Z", 0, "5", meter="peak")) == []
    assert steps.feed(pane("2026-11-02T12:01:00Z", 0, "4", meter="peak")) == []  # not 5 + 4
    assert steps.usage.read() == 5
    assert steps.feed(pane("2026-11-02T12:01:00Z", 1, "7", meter="peak")) == ["6"]
    assert steps.feed(pane("2026-11-02T13:00:00Z", 0, "12", meter="peak")) == ["10"]


@pytest.mark.parametrize("name", ["alert_id", "status", "subject", "meter", "threshold"])
def test_an_alert_message_carries_the_alert_and_what_subscribers_filter_on(name):
    alert = {"alert_id": "x1", "status": "crossed", "subject": "c", "meter": "m",
             "threshold": "80%", "value": "8.5"}
    message = alert_message(alert)
    assert json.loads(message.data) == alert
    assert message.attributes[name] == alert[name]


@pytest.mark.parametrize("extra, error", [
    ([], "--prices is required with --limits"),
    (["--prices", str(examples.PRICES)], "limits.yaml: limits[0] (plan developer, meter "
                                         "active_users).meter: a period limit on a "
                                         "UNIQUE_COUNT meter is refused"),
])
def test_the_stream_refuses_limits_it_cannot_apply_before_it_starts(tmp_path, extra, error):
    limits = tmp_path / "limits.yaml"
    limits.write_text("limits:\n  - {plan: developer, meter: active_users, thresholds: [5]}\n")
    options = PipelineOptions(["--subscription", "projects/tallyflow-test/subscriptions/usage",
                               "--meters", str(examples.METERS), "--bigquery_project", "tallyflow-test",
                               "--limits", str(limits), *extra], streaming=True)
    with pytest.raises(ValueError, match=re.escape(error)):
        streaming_usage.build(beam.Pipeline(options=options),
                              options.view_as(streaming_usage.StreamingUsageOptions), "job")
