"""Usage alerts end to end: the Pub/Sub emulator, local-bigquery, the DirectRunner.

A customer's plan includes 10 API requests a month, with thresholds at 50%, 80%
and 100%. Requests arrive in bursts (GET and POST: the period sums across
dimensions), every burst with redeliveries of earlier events, and the job is
restarted with `--restore_open_windows` between the second and third burst.
Exactly three alerts must appear, on the alert topic and in `usage_alerts`,
each the first time the period's count reaches 5, 8 and 10.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from decimal import Decimal

import pytest
import yaml

from schemas.catalog import load_catalog
from schemas.limits import alert_id, billing_period
from schemas.values import format_time, parse_rfc3339
from tallyflow.examples import METERS
from tallyflow.reports import alerts as settle_alerts
from tallyflow.reports.data import Dataset
from transforms.rows import usage_alert_row
from tests.e2e.test_streaming_e2e import (StreamJob, event, lane, publish_messages,  # noqa: F401
                                          WAIT_SECONDS, query, table, wait_for)

SUBJECT = "cust-limits"
THRESHOLDS = ("50%", "80%", "100%")
PRICES = {"plans": [{"id": "starter", "currency": "USD", "versions": [{
    "version": 1, "starting_at": "2026-01-01T00:00:00Z",
    "prices": [{"id": "requests", "meter": "api_requests", "model": "per_unit",
                "unit_amount": "0.01", "free_units": 10}]}]}],
    "assignments": [{"subject": SUBJECT, "plan": "starter",
                     "starting_at": "2026-01-01T00:00:00Z"}]}
LIMITS = {"limits": [{"plan": "starter", "meter": "api_requests",
                      "thresholds": list(THRESHOLDS)}]}


@pytest.fixture
def alerts_topic(lane):  # noqa: F811 - the fixture imported above
    """A topic for the alerts and a subscription that sees them."""
    uid = uuid.uuid4().hex[:8]
    topic, subscription = lane.topic_path(f"alerts-{uid}"), lane.subscription_path(
        f"alerts-{uid}-sub")
    lane.publisher_client().create_topic(name=topic)
    lane.subscriber_client().create_subscription(name=subscription, topic=topic)
    return topic, subscription


def requests(count: int, time_ns: int | None = None) -> list[dict]:
    return [event(SUBJECT, "api.request", {"method": ("GET", "POST")[n % 2], "bytes_out": 10},
                  time_ns) for n in range(count)]


def in_a_window_still_open(lead_s: int = 20) -> int:
    """An event time whose 1m window ends at least `lead_s` after now (and within the
    5-minute future skew), so the events are on time for a job started minutes after
    the test's first events, however long that start took."""
    now = time.time_ns()
    minute = 60 * 10**9
    start = now // minute * minute
    return start + 5 * 10**9 if now + lead_s * 10**9 < start + minute else start + minute + 5 * 10**9


def payloads(events: list[dict]) -> list[bytes]:
    return [json.dumps(e).encode() for e in events]


def alert_rows(bq, lane) -> list[dict]:
    return query(bq, f"SELECT alert_id, status, threshold, CAST(value AS STRING) AS value, "
                     f"job_id FROM {table(lane, 'usage_alerts')} ORDER BY threshold_quantity")


def pull_alerts(lane, subscription: str) -> list[dict]:
    """Every alert message the topic delivered (acknowledged)."""
    subscriber, received = lane.subscriber_client(), []
    while True:
        response = subscriber.pull(subscription=subscription, max_messages=100,
                                   return_immediately=True, timeout=10)
        if not response.received_messages:
            return received
        subscriber.acknowledge(subscription=subscription,
                               ack_ids=[m.ack_id for m in response.received_messages])
        received += [{"data": json.loads(m.message.data), **dict(m.message.attributes)}
                     for m in response.received_messages]


def test_crossing_50_80_and_100_percent_alerts_exactly_three_times(lane, alerts_topic,  # noqa: F811
                                                                   bq_client, tmp_path):
    topic, subscription = alerts_topic
    (tmp_path / "prices.yaml").write_text(yaml.safe_dump(PRICES))
    (tmp_path / "limits.yaml").write_text(yaml.safe_dump(LIMITS))
    options = ("--limits", str(tmp_path / "limits.yaml"), "--prices",
               str(tmp_path / "prices.yaml"), "--alert_topic", topic)
    first, second = requests(6), requests(3)

    def alerted(n):
        return wait_for(lambda: alert_rows(bq_client, lane), lambda rows: len(rows) >= n,
                        f"{n} alerts", timeout=3 * WAIT_SECONDS)  # a job's start included

    with StreamJob(lane, "limits-1", *options):
        publish_messages(lane, payloads(first + first[:2]))         # 6 -> 50%
        alerted(1)
        publish_messages(lane, payloads(second + first[2:4] + second[:1]))  # 9 -> 80%
        alerted(2)
    with StreamJob(lane, "limits-2", "--restore_open_windows", *options):
        third = requests(3, in_a_window_still_open())  # its window must close on time here
        # redeliveries of what the first job counted, then the last burst: 12 -> 100%
        publish_messages(lane, payloads(first + second + third + third[1:]))
        rows = alerted(3)
        # the job's later panes (on-time, and each early firing) must add no alert
        wait_for(lambda: query(bq_client, f"SELECT COUNT(*) AS n FROM "
                                          f"{table(lane, 'usage_panes')} WHERE "
                                          f"job_id = 'limits-2' AND pane_timing = 'ON_TIME'"),
                 lambda seen: seen[0]["n"] > 0, "an on-time pane of the second job",
                 timeout=3 * WAIT_SECONDS)  # a 1m window must close first, on a loaded runner
        rows = alert_rows(bq_client, lane)

    period_start = format_time(billing_period(
        int(next(r for r in query(bq_client, f"SELECT UNIX_MICROS(MIN(time)) AS t FROM "
                                              f"{table(lane, 'events')} WHERE subject = "
                                              f"'{SUBJECT}'"))["t"]) * 1000)[0])
    expected_ids = [alert_id(SUBJECT, "api_requests", period_start, t) for t in THRESHOLDS]
    assert [(r["alert_id"], r["status"], r["threshold"]) for r in rows] == [
        (i, "crossed", t) for i, t in zip(expected_ids, THRESHOLDS)]
    # the count when each crossed: at least its threshold, at most what its burst brought
    assert [low <= Decimal(r["value"]) <= high for r, (low, high) in
            zip(rows, ((5, 6), (8, 9), (10, 12)))] == [True] * 3, rows
    assert [r["job_id"] for r in rows] == ["limits-1", "limits-1", "limits-2"]
    messages = pull_alerts(lane, subscription)
    assert sorted(m["alert_id"] for m in messages) == sorted(expected_ids)
    assert {m["alert_id"]: m["data"]["threshold"] for m in messages} == dict(
        zip(expected_ids, THRESHOLDS))


def test_a_recompute_below_a_threshold_settles_its_alert_as_cleared_once(lane, bq_client,  # noqa: F811
                                                                        capsys, tmp_path):
    """Streaming alerted 80% (8) and 100% (10) of November at 10; the recompute found 9
    (a duplicate past the stream's horizon): 100% is cleared, 80% stays, and a second
    settlement records nothing more."""
    nov, dec = "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"

    def crossing(threshold, quantity):
        return {"alert_id": alert_id(SUBJECT, "api_requests", nov, threshold),
                "status": "crossed", "subject": SUBJECT, "meter": "api_requests",
                "period_start": nov, "period_end": dec, "threshold": threshold,
                "threshold_quantity": quantity, "value": "10",
                "crossed_at": "2026-11-03T10:00:04Z", "dimensions": '{"method": "GET"}',
                "window_start": "2026-11-03T10:00:00Z", "window_end": "2026-11-03T10:01:00Z",
                "pane_timing": "EARLY", "pane_index": 0}

    written = [usage_alert_row(crossing(t, q), "stream-job") for t, q in (("80%", "8"),
                                                                          ("100%", "10"))]
    assert not bq_client.insert_rows_json(f"{lane.project}.{lane.dataset}.usage_alerts",
                                          [row for _, row in written],
                                          row_ids=[row_id for row_id, _ in written])
    assert not bq_client.insert_rows_json(f"{lane.project}.{lane.dataset}.recompute_runs", [{
        "run_id": "r1", "revision": 1, "period_start": nov, "period_end": dec,
        "window_seconds": 60, "started_at": "2026-12-02T00:00:00Z",
        "committed_at": "2026-12-02T00:01:00Z"}])
    assert not bq_client.insert_rows_json(
        f"{lane.project}.{lane.dataset}.usage_recomputed", [
            {"subject": SUBJECT, "meter": "api_requests", "dimensions": f'{{"method": "{m}"}}',
             "window_start": "2026-11-03T10:00:00Z", "window_end": "2026-11-03T10:01:00Z",
             "value": value, "event_count": int(value), "fingerprint": "f", "revision": 1,
             "run_id": "r1", "recomputed_at": "2026-12-02T00:01:00Z", "period_start": nov,
             "period_end": dec} for m, value in (("GET", "5"), ("POST", "4"))])
    argv = ["--period-start", nov, "--period-end", dec, "--meters", str(METERS),
            "--bigquery_project", lane.project, "--bigquery_dataset", lane.dataset,
            "--bigquery_endpoint", lane.bigquery_endpoint]
    assert settle_alerts.main(argv) == 0
    assert "2 crossed alerts checked, 1 cleared" in capsys.readouterr().out
    assert settle_alerts.main(argv) == 0
    assert "1 crossed alerts checked, 0 cleared" in capsys.readouterr().out
    rows = query(bq_client, f"SELECT alert_id, status, threshold, CAST(value AS STRING) AS v "
                            f"FROM {table(lane, 'usage_alerts')} ORDER BY status, threshold")
    assert [(r["status"], r["threshold"], Decimal(r["v"])) for r in rows] == [
        ("cleared", "100%", 9), ("crossed", "100%", 10), ("crossed", "80%", 10)]

    (tmp_path / "prices.yaml").write_text(yaml.safe_dump(PRICES))
    (tmp_path / "limits.yaml").write_text(yaml.safe_dump(LIMITS))
    data = Dataset(lane.project, lane.dataset, lane.bigquery_endpoint)
    args = type("Args", (), {"limits": str(tmp_path / "limits.yaml"),
                             "prices": str(tmp_path / "prices.yaml")})
    section = settle_alerts.limits_text(SUBJECT, settle_alerts.customer_limits(
        data, load_catalog(str(METERS)), args, SUBJECT,
        parse_rfc3339(nov), parse_rfc3339(dec))).splitlines()
    # period, meter, threshold, quantity, usage to date, status, crossed at, usage then,
    # pane, final usage, cleared at
    thresholds = {line.split()[2]: re.split(r"\s{2,}", line.strip()) for line in section[3:]}
    assert thresholds["50%"][3:] == ["5", "9", "reached without alert"]  # 50% never alerted here
    assert thresholds["80%"][3:8] == ["8", "9", "crossed", "2026-11-03T10:00:04Z", "10"]
    assert len(thresholds["80%"]) == 9  # not cleared
    assert thresholds["100%"][3:8] == ["10", "9", "cleared", "2026-11-03T10:00:04Z", "10"]
    assert thresholds["100%"][9] == "9"
