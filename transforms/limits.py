"""UsageAlerts: period-to-date usage from the streaming panes, and an alert the first time
it reaches each threshold of a billing period (docs/limits.md).

    usage panes -> KeyByWindow (thresholds resolved at the window's start) -> global
                   window -> [after RestoreLimitState]
                -> WindowChanges: state per customer x meter x dimensions x window holds
                   its latest pane; each newer pane emits the change it makes to the
                   period (keyed customer x meter x period)
                -> CrossThresholds: state per customer x meter x period holds the usage
                   to date and the thresholds already alerted
    (timers clear each once its window's or period's end + allowed lateness has passed)

Panes are accumulating, so a window's latest pane replaces its earlier ones: a
redelivered or duplicate pane (same or lower index) changes nothing, an early,
on-time or late pane updates its window, and the period's usage is the sum of
its windows (the greatest, for MAX). Because the crossed thresholds are kept with
the usage, each alerts once per period, in threshold order when one pane jumps
several. Two small keyed states rather than one map of every window: a pane
reads and writes a few values, however many windows its period has.

A restarted job (`--restore_open_windows`) has lost Beam state, so
RestoreLimitState seeds it from BigQuery first: the alerts already recorded for
open periods, and each window's current value from the `usage` view; the job's
own first pane of a window then replaces its restored value.
"""
from __future__ import annotations

import json
import time
import typing
from decimal import Decimal

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Timestamp

from schemas import sql
from schemas.catalog import MeterCatalog
from schemas.limits import (ZERO, LimitBook, alert_id, apply_change, newly_crossed,
                            window_change)
from schemas.pricing import PriceBook
from schemas.values import NS, format_decimal, format_time, parse_rfc3339
from transforms.bigquery_target import BigQueryTarget
from transforms.storage_read import ReadQueryStreams, arrow_rows
from transforms.pubsub import PublishMessages

PANE, RESTORED_WINDOW, RESTORED_ALERT = "pane", "restored_window", "restored_alert"
CHANGE, RESTORED_CHANGE = "change", "restored_change"
CROSSED = "crossed"
NS_PER_US = 1000
# The oldest window a restore reads: an open period began at most a month and
# allowed lateness ago (the longest month, plus a day for anchor-day clamping).
LONGEST_PERIOD_S = 32 * 86400

Key = typing.Tuple[str, str, str]  # subject, meter, period start (RFC 3339)
WindowKey = typing.Tuple[str, str, str, str]  # subject, meter, dimensions, window start


def period_key(book: LimitBook, prices: PriceBook, subject: str, meter: str,
               instant_ns: int) -> tuple[Key, int]:
    """The state key of a customer's meter in the period holding `instant_ns`, and the
    period's end (ns)."""
    start, end = book.period(prices, subject, instant_ns)
    return (subject, meter, format_time(start)), end


class KeyByWindow(beam.DoFn):
    """Usage pane rows with thresholds -> (window key, (PANE, row, levels, period key,
    period end)); rows of meters without a limit stop here."""

    def __init__(self, book: LimitBook, prices: PriceBook):
        self._book, self._prices = book, prices

    def process(self, row):
        if row["meter"] not in self._book.meters:
            return
        start_ns = parse_rfc3339(row["window_start"])
        levels = self._book.levels(self._prices, row["subject"], row["meter"], start_ns)
        if levels:
            key, end_ns = period_key(self._book, self._prices, row["subject"], row["meter"],
                                     start_ns)
            yield ((row["subject"], row["meter"], row["dimensions"], row["window_start"]),
                   (PANE, row, levels, key, end_ns))


def alert(key: Key, period_end_ns: int, level, value, row: dict, crossed_ns: int) -> dict:
    """The alert of a crossing: what crossed, by how much, when, and in which pane."""
    subject, meter, period_start = key
    return {
        "alert_id": alert_id(subject, meter, period_start, level.label),
        "status": CROSSED,
        "subject": subject,
        "meter": meter,
        "period_start": period_start,
        "period_end": format_time(period_end_ns),
        "threshold": level.label,
        "threshold_quantity": format_decimal(level.quantity),
        "value": format_decimal(value),
        "crossed_at": format_time(crossed_ns - crossed_ns % NS_PER_US),
        "dimensions": row["dimensions"],
        "window_start": row["window_start"],
        "window_end": row["window_end"],
        "pane_timing": row["pane_timing"],
        "pane_index": row["pane_index"],
    }


class _Expiring:
    """State that a timer clears once a window's or period's end + allowed lateness has
    passed: no pane can change it after that (a late pane holds the watermark back)."""

    def __init__(self, catalog: MeterCatalog, allowed_lateness_ns: int):
        self._aggregations = {m.key: m.aggregation for m in catalog.meters}
        self._lateness_ns = allowed_lateness_ns

    def _expire_after(self, expiry, end_ns: int) -> None:
        expiry.set(Timestamp(micros=(end_ns + self._lateness_ns) // NS_PER_US))


class WindowChanges(_Expiring, beam.DoFn):
    """Per customer x meter x dimensions x window, until it closes: its latest pane, and
    what each newer pane changes in the period (`window_change`), keyed by period. Panes accumulate, so a
    duplicate or older pane (same or lower index) changes nothing; a restored value
    (RESTORED_WINDOW) counts until the job's own first pane of the window replaces it."""

    LATEST = ReadModifyWriteStateSpec("latest_pane", beam.coders.PickleCoder())
    EXPIRY = TimerSpec("period_closed", TimeDomain.WATERMARK)

    def process(self, keyed, latest=beam.DoFn.StateParam(LATEST),
                expiry=beam.DoFn.TimerParam(EXPIRY)):
        (_, meter, _, _), (kind, *payload) = keyed
        seen = latest.read()
        if kind == RESTORED_WINDOW:  # kept until its period closes (its window is unknown)
            value, key, end_ns = payload
            rank, out, closes_ns = (0,), (RESTORED_CHANGE,), end_ns
        else:
            row, levels, key, end_ns = payload
            value, rank = Decimal(row["value"]), (1, row["pane_index"])
            out, closes_ns = (CHANGE, row, levels), parse_rfc3339(row["window_end"])
        if seen is not None and seen[0] >= rank:
            return []
        latest.write((rank, value))
        self._expire_after(expiry, closes_ns)
        change = window_change(self._aggregations[meter], seen and seen[1], value)
        return [(key, (*out, change, end_ns))]

    @on_timer(EXPIRY)
    def forget(self, latest=beam.DoFn.StateParam(LATEST)):
        latest.clear()


class CrossThresholds(_Expiring, beam.DoFn):
    """Per customer x meter x period: the usage to date, the thresholds already alerted,
    and an alert for each threshold a change newly makes it reach, lowest first."""

    USAGE = ReadModifyWriteStateSpec("period_usage", beam.coders.PickleCoder())
    ALERTED = ReadModifyWriteStateSpec("alerted_thresholds", beam.coders.PickleCoder())
    EXPIRY = TimerSpec("period_closed", TimeDomain.WATERMARK)

    def process(self, keyed, usage=beam.DoFn.StateParam(USAGE),
                alerted=beam.DoFn.StateParam(ALERTED), expiry=beam.DoFn.TimerParam(EXPIRY)):
        key, (kind, *payload) = keyed
        done = alerted.read() or frozenset()
        if kind == RESTORED_ALERT:
            alerted.write(done | {payload[0]})
            return []
        *pane, change, end_ns = payload
        value = apply_change(self._aggregations[key[1]], usage.read() or ZERO, change)
        usage.write(value)
        self._expire_after(expiry, end_ns)
        if kind == RESTORED_CHANGE:
            return []
        row, levels = pane
        crossed = newly_crossed(levels, value, done)
        if crossed:
            alerted.write(done | {level.label for level in crossed})
        now = time.time_ns()
        return [alert(key, end_ns, level, value, row, now) for level in crossed]

    @on_timer(EXPIRY)
    def forget(self, usage=beam.DoFn.StateParam(USAGE),
               alerted=beam.DoFn.StateParam(ALERTED)):
        usage.clear()
        alerted.clear()


def _after(pcoll, done, name: str, key_type):
    """`pcoll`, held back until `done` (a bounded PCollection) has been read."""
    return pcoll | name >> beam.Map(lambda element, _done: element, beam.pvalue.AsIter(
        done)).with_output_types(typing.Tuple[key_type, typing.Any])


class UsageAlerts(beam.PTransform):
    """Usage pane rows -> alerts (dicts, one per threshold crossing per period).

    `restored` (RestoreLimitState): {"windows": window seeds, "alerts": alert seeds};
    panes wait until they are read, so no threshold alerts twice after a restart.
    """

    def __init__(self, book: LimitBook, prices: PriceBook, catalog: MeterCatalog,
                 allowed_lateness_ns: int, restored=None):
        super().__init__()
        self._book, self._prices, self._catalog = book, prices, catalog
        self._lateness_ns = allowed_lateness_ns
        self._restored = restored

    def expand(self, usage):
        panes = (usage
                 | "KeyByWindow" >> beam.ParDo(KeyByWindow(self._book, self._prices))
                 .with_output_types(typing.Tuple[WindowKey, typing.Any])
                 | "GlobalWindow" >> beam.WindowInto(GlobalWindows()))
        if self._restored is not None:
            seeds = self._restored
            done = ((seeds["windows"], seeds["alerts"]) | "Restored" >> beam.Flatten()
                    | "RestoredDone" >> beam.Map(lambda _seed: None))
            panes = ((_after(panes, done, "AfterRestore", WindowKey), seeds["windows"])
                     | "WithRestoredWindows" >> beam.Flatten())
        changes = (panes
                   | "WindowChanges" >> beam.ParDo(
                       WindowChanges(self._catalog, self._lateness_ns))
                   .with_output_types(typing.Tuple[Key, typing.Any]))
        if self._restored is not None:
            changes = ((changes, self._restored["alerts"])
                       | "WithRestoredAlerts" >> beam.Flatten())
        return changes | "CrossThresholds" >> beam.ParDo(
            CrossThresholds(self._catalog, self._lateness_ns))


class RestoreLimitState(beam.PTransform):
    """The state of open periods, for a restarted job, from BigQuery: the thresholds
    `usage_alerts` recorded as crossed, and each window's value in the `usage` view
    (the latest recompute, else the latest pane), as {"windows", "alerts"} seeds for
    UsageAlerts."""

    def __init__(self, target: BigQueryTarget, book: LimitBook, prices: PriceBook,
                 allowed_lateness_ns: int):
        super().__init__()
        self._target = target
        self._book, self._prices = book, prices
        self._lateness_s = allowed_lateness_ns // NS

    def expand(self, pbegin):
        book, prices = self._book, self._prices
        # catalog keys are [a-z][a-z0-9_]*: safe as literals (NULL: no limits, no rows)
        meters = ", ".join(f"'{key}'" for key in sorted(book.meters)) or "NULL"
        alerts_sql = self._target.sql(sql.OPEN_PERIOD_ALERTS)
        windows_sql = self._target.sql(sql.RECENT_WINDOWS, meters=meters)

        def window_seed(r):
            start_ns = r["start_us"] * NS_PER_US
            key, end_ns = period_key(book, prices, r["subject"], r["meter"], start_ns)
            value = r["value"] if r["value"] is not None else r["value_bignumeric"]
            return ((r["subject"], r["meter"], r["dimensions"], format_time(start_ns)),
                    (RESTORED_WINDOW, value, key, end_ns))

        alerts = (pbegin
                  | "QueryAlerts" >> ReadQueryStreams(self._target, alerts_sql,
                                                      [("lateness", "INT64", self._lateness_s),
                                                       ("crossed", "STRING", CROSSED)])
                  | "AlertRows" >> beam.FlatMap(arrow_rows)
                  | "AlertSeeds" >> beam.Map(lambda r: (
                      (r["subject"], r["meter"], format_time(r["start_us"] * NS_PER_US)),
                      (RESTORED_ALERT, r["threshold"]))).with_output_types(
                          typing.Tuple[Key, typing.Any]))
        windows = (pbegin
                   | "QueryWindows" >> ReadQueryStreams(self._target, windows_sql, [
                       ("span", "INT64", self._lateness_s + LONGEST_PERIOD_S)])
                   | "WindowRows" >> beam.FlatMap(arrow_rows)
                   | "WindowSeeds" >> beam.Map(window_seed).with_output_types(
                       typing.Tuple[WindowKey, typing.Any]))
        return {"windows": windows, "alerts": alerts}


def alert_message(alert_row: dict) -> PubsubMessage:
    """An alert as a Pub/Sub message: the alert as JSON, and what a subscriber filters
    or deduplicates on as attributes."""
    return PubsubMessage(json.dumps(alert_row, sort_keys=True).encode("utf-8"),
                         {name: str(alert_row[name])
                          for name in ("alert_id", "status", "subject", "meter", "threshold")})


class PublishAlerts(PublishMessages):
    """Alerts -> a Pub/Sub topic, for the product's enforcement service."""

    def __init__(self, topic: str):
        super().__init__(topic, alert_message)
