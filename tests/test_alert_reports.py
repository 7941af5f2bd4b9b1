"""Settling alerts against final usage, and the statement's limits section
(tallyflow/reports/alerts.py), on rows shaped as BigQuery returns them."""
import argparse
import datetime as dt
from decimal import Decimal

from tallyflow.examples import LIMITS, METERS, PRICES
from schemas.catalog import load_catalog
from tallyflow.reports.alerts import (CLEARED, cleared_alerts, final_values, limits_section)
from tallyflow.reports.data import Instant

UTC = dt.timezone.utc
NOV, DEC = dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2026, 12, 1, tzinfo=UTC)


def crossed(threshold: str, quantity, value, subject="cust-002", meter="api_requests"):
    return {"alert_id": f"id-{threshold}", "status": "crossed", "subject": subject,
            "meter": meter, "period_start": NOV, "period_end": DEC, "threshold": threshold,
            "threshold_quantity": Decimal(quantity), "value": Decimal(value),
            "crossed_at": dt.datetime(2026, 11, 20, 10, 0, 5, 123456, tzinfo=UTC),
            "dimensions": "{}", "window_start": dt.datetime(2026, 11, 20, 10, tzinfo=UTC),
            "window_end": dt.datetime(2026, 11, 20, 11, tzinfo=UTC), "pane_timing": "EARLY",
            "pane_index": 0}


class FakeData:
    """The `usage` view and `usage_alerts` of one test, answering Dataset.query."""

    def __init__(self, windows=(), alerts=()):
        self.windows, self.alerts, self.asked = list(windows), list(alerts), []

    def query(self, sql, **params):  # a schemas.sql statement, its tables unfilled
        self.asked.append(params)
        if "FROM {usage_alerts}" in sql:
            return [a for a in self.alerts if a["subject"] == params["subject"]]
        start, end = (params[n].ns for n in ("start", "end"))
        return [{"value": value, "value_bignumeric": None}
                for subject, meter, at, value in self.windows
                if subject == params["subject"] and meter == params["meter"]
                and start <= int(at.timestamp()) * 10 ** 9 < end]


def test_only_thresholds_the_final_usage_does_not_reach_are_cleared():
    alerts = [crossed("50%", 500, 510), crossed("80%", 800, 801), crossed("100%", 1000, 1000)]
    # final usage after a recompute: 700 + 99 in November, December does not count
    data = FakeData(windows=[("cust-002", "api_requests", dt.datetime(2026, 11, 3, tzinfo=UTC),
                              Decimal(700)),
                             ("cust-002", "api_requests", dt.datetime(2026, 11, 30, 23,
                                                                      tzinfo=UTC), Decimal(99)),
                             ("cust-002", "api_requests", DEC, Decimal(5000))])
    finals = final_values(data, alerts, {"api_requests": "COUNT"})
    assert finals == {("cust-002", "api_requests", NOV): Decimal(799)}
    now = int(DEC.timestamp()) * 10 ** 9 + 123_456_789
    cleared = cleared_alerts(alerts, finals, now)
    assert [(c["alert_id"], c["status"], c["value"], c["crossed_at"]) for c in cleared] == [
        ("id-80%", CLEARED, "799", "2026-12-01T00:00:00.123456Z"),
        ("id-100%", CLEARED, "799", "2026-12-01T00:00:00.123456Z")]
    # the crossing's own fields stay, as the stream wrote them
    assert cleared[0]["period_start"] == "2026-11-01T00:00:00Z"
    assert cleared[0]["threshold_quantity"] == "800"
    assert cleared[0]["window_start"] == "2026-11-20T10:00:00Z"


def test_a_max_meter_settles_on_the_period_s_highest_window():
    alerts = [crossed("100", 100, 120, meter="peak_connections")]
    data = FakeData(windows=[("cust-002", "peak_connections", dt.datetime(2026, 11, d, tzinfo=UTC),
                              Decimal(v)) for d, v in ((2, 90), (3, 99), (4, 12))])
    finals = final_values(data, alerts, {"peak_connections": "MAX"})
    assert [c["value"] for c in cleared_alerts(alerts, finals, 0)] == ["99"]


def test_the_statement_section_lists_every_threshold_its_crossing_and_its_clearing():
    # cust-002 is on developer (1000 included) with periods from the 15th
    period = {"period_start": dt.datetime(2026, 11, 15, tzinfo=UTC),
              "period_end": dt.datetime(2026, 12, 15, tzinfo=UTC)}
    clearing = {**crossed("80%", 800, 799), **period, "status": CLEARED,
                "crossed_at": dt.datetime(2026, 12, 16, tzinfo=UTC)}
    data = FakeData(alerts=[{**crossed("50%", 500, 510), **period},
                            {**crossed("80%", 800, 801), **period}, clearing])
    args = argparse.Namespace(limits=str(LIMITS), prices=str(PRICES))
    start = int(dt.datetime(2026, 11, 20, tzinfo=UTC).timestamp()) * 10 ** 9
    end = int(DEC.timestamp()) * 10 ** 9
    text = limits_section(data, load_catalog(str(METERS)), args, "cust-002", start, end)
    lines = [line.split() for line in text.splitlines()[2:]]
    assert [line[:4] for line in lines[1:]] == [
        ["2026-11-15", "api_requests", "50%", "500"],
        ["2026-11-15", "api_requests", "80%", "800"],
        ["2026-11-15", "api_requests", "100%", "1000"]]
    assert lines[1][4:] == ["2026-11-20T10:00:05.123456Z", "510", "EARLY", "0", "of",
                            "2026-11-20T10:00:00Z"]
    assert lines[2][4:] == ["2026-11-20T10:00:05.123456Z", "801", "EARLY", "0", "of",
                            "2026-11-20T10:00:00Z", "cleared", "(799)"]
    assert lines[3][4:] == ["not", "reached"]
    assert all(params.get("subject") == "cust-002" for params in data.asked)
    assert isinstance(data.asked[0]["start"], Instant)


def test_without_limits_or_alerts_the_statement_has_no_limits_section():
    args = argparse.Namespace(limits=None, prices=None)
    assert limits_section(FakeData(), load_catalog(str(METERS)), args, "cust-009", 0, 1) == ""


def test_a_dataset_without_the_alerts_table_still_shows_the_limits():
    from google.api_core.exceptions import NotFound

    class Older(FakeData):
        def query(self, sql, **params):
            raise NotFound("usage_alerts")

    args = argparse.Namespace(limits=str(LIMITS), prices=str(PRICES))
    start = int(dt.datetime(2026, 11, 20, tzinfo=UTC).timestamp()) * 10 ** 9
    text = limits_section(Older(), load_catalog(str(METERS)), args, "cust-002", start,
                          int(DEC.timestamp()) * 10 ** 9)
    assert [line.split()[2:5] for line in text.splitlines()[3:]] == [
        ["50%", "500", "not"], ["80%", "800", "not"], ["100%", "1000", "not"]]
