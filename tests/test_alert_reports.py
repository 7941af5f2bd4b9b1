"""Settling alerts against final usage, and the statement's limits section
(tallyflow/reports/alerts.py), on rows shaped as BigQuery returns them."""
import argparse
import datetime as dt
import re
from decimal import Decimal
from html.parser import HTMLParser

from tallyflow.examples import LIMITS, METERS, PRICES
from schemas.catalog import load_catalog
from tallyflow.reports.alerts import (CLEARED, cleared_alerts, customer_limits, final_values,
                                     limits_html, limits_text)
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


NOV_15, DEC_15 = (dt.datetime(2026, m, 15, tzinfo=UTC) for m in (11, 12))


def statement_world() -> tuple[FakeData, list]:
    """cust-002 is on developer (1000 included) with periods from the 15th: 50% and 80%
    crossed provisionally, 80% cleared by the settlement; the usage view has its windows."""
    period = {"period_start": NOV_15, "period_end": DEC_15}
    clearing = {**crossed("80%", 800, 799), **period, "status": CLEARED,
                "crossed_at": dt.datetime(2026, 12, 16, 1, 2, 3, tzinfo=UTC)}
    data = FakeData(alerts=[{**crossed("50%", 500, 510), **period},
                            {**crossed("80%", 800, 801), **period}, clearing],
                    windows=[("cust-002", "api_requests", at, Decimal(v)) for at, v in (
                        (dt.datetime(2026, 11, 14, 23, tzinfo=UTC), 1000),  # the period before
                        (NOV_15, 300), (dt.datetime(2026, 11, 30, tzinfo=UTC), Decimal("401.5")),
                        (DEC_15, 2000))])  # the period after
    args = argparse.Namespace(limits=str(LIMITS), prices=str(PRICES))
    start = int(dt.datetime(2026, 11, 20, tzinfo=UTC).timestamp()) * 10 ** 9
    found = customer_limits(data, load_catalog(str(METERS)), args, "cust-002", start,
                            int(DEC.timestamp()) * 10 ** 9)
    return data, found


def test_the_statement_section_lists_every_threshold_its_crossing_and_its_clearing():
    data, found = statement_world()
    lines = [line.split() for line in limits_text("cust-002", found).splitlines()[2:]]
    # usage to date: the two windows of [Nov 15, Dec 15) only, 300 + 401.5
    assert [line[:6] for line in lines[1:]] == [
        ["2026-11-15", "api_requests", "50%", "500", "701.5", "crossed"],
        ["2026-11-15", "api_requests", "80%", "800", "701.5", "cleared"],
        ["2026-11-15", "api_requests", "100%", "1000", "701.5", "not"]]
    assert lines[1][6:] == ["2026-11-20T10:00:05.123456Z", "510", "EARLY", "0", "of",
                            "2026-11-20T10:00:00Z"]
    assert lines[2][6:] == ["2026-11-20T10:00:05.123456Z", "801", "EARLY", "0", "of",
                            "2026-11-20T10:00:00Z", "799", "2026-12-16T01:02:03Z"]
    assert lines[3][6:] == ["reached"]
    assert all(params.get("subject") == "cust-002" for params in data.asked)
    assert isinstance(data.asked[0]["start"], Instant)


class Cells(HTMLParser):
    """The text of every element with a class, by class, in document order."""

    def __init__(self):
        super().__init__()
        self.found, self._open = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "br":  # a void element: no end tag
            return
        attrs = dict(attrs)
        self._open.append((attrs.get("class"), attrs, []))

    def handle_data(self, text):
        for _, _, texts in self._open:
            texts.append(text)

    def handle_endtag(self, tag):
        name, attrs, texts = self._open.pop()
        if name:
            self.found.append((name, attrs, "".join(texts)))


def test_the_html_section_shows_the_same_thresholds_usage_and_statuses_as_the_text():
    _, found = statement_world()
    parser = Cells()
    parser.feed("\n".join(limits_html(found)))
    (usage,) = [(attrs, text) for name, attrs, text in parser.found if name == "usage"]
    assert usage == ({"class": "usage", "data-meter": "api_requests",
                      "data-period": "2026-11-15T00:00:00Z"}, "701.5")
    rows = [attrs for name, attrs, _ in parser.found if name == "threshold-row"]
    assert [(r["data-threshold"], r["data-status"]) for r in rows] == [
        ("50%", "crossed"), ("80%", "cleared"), ("100%", "not reached")]
    cells = [(name.split()[0], text) for name, _, text in parser.found
             if name.split()[0] in ("quantity", "status", "crossed-at", "final-usage",
                                    "cleared-at")]
    assert cells == [
        ("quantity", "500"), ("status", "crossed"), ("crossed-at", "2026-11-20T10:00:05.123456Z"),
        ("final-usage", ""), ("cleared-at", ""),
        ("quantity", "800"), ("status", "cleared"), ("crossed-at", "2026-11-20T10:00:05.123456Z"),
        ("final-usage", "799"), ("cleared-at", "2026-12-16T01:02:03Z"),
        ("quantity", "1000"), ("status", "not reached"), ("crossed-at", ""),
        ("final-usage", ""), ("cleared-at", "")]
    # the text section's rows, cell for cell (a cell ends before its row does)
    html_rows = [[text for _, _, text in parser.found[i - 8:i] if text]
                 for i, (name, _, _) in enumerate(parser.found) if name == "threshold-row"]
    text_rows = [re.split(r"\s{2,}", line.strip())
                 for line in limits_text("cust-002", found).splitlines()[3:]]
    assert html_rows == [row[2:4] + row[5:] for row in text_rows]


def test_a_threshold_the_final_usage_reaches_without_an_alert_says_so():
    # the stream never alerted cust-002 (developer, 1000 included); the recompute has 1000
    data = FakeData(windows=[("cust-002", "api_requests", NOV_15, Decimal(999)),
                             ("cust-002", "api_requests", dt.datetime(2026, 12, 14, 23, 59,
                                                                      tzinfo=UTC), Decimal(1))])
    args = argparse.Namespace(limits=str(LIMITS), prices=str(PRICES))
    (found,) = customer_limits(data, load_catalog(str(METERS)), args, "cust-002",
                               int(NOV_15.timestamp()) * 10 ** 9, int(DEC.timestamp()) * 10 ** 9)
    assert found.usage == 1000
    assert [(t.label, t.status) for t in found.thresholds] == [
        ("50%", "reached without alert"), ("80%", "reached without alert"),
        ("100%", "reached without alert")]
    html = "\n".join(limits_html([found]))
    assert html.count('data-status="reached without alert"') == 3
    assert "3 of 3 thresholds reached now" in html


def test_a_statement_without_limits_or_alerts_has_no_limits_section_in_either_form():
    assert limits_html([]) == [] and limits_text("cust-009", []) == ""


def test_without_limits_or_alerts_the_statement_has_no_limits_section():
    args = argparse.Namespace(limits=None, prices=None)
    assert customer_limits(FakeData(), load_catalog(str(METERS)), args, "cust-009", 0, 1) == []


def test_a_dataset_without_the_alerts_table_still_shows_the_limits():
    from google.api_core.exceptions import NotFound

    class Older(FakeData):
        def query(self, sql, **params):
            if "FROM {usage_alerts}" in sql:
                raise NotFound("usage_alerts")
            return super().query(sql, **params)

    args = argparse.Namespace(limits=str(LIMITS), prices=str(PRICES))
    start = int(dt.datetime(2026, 11, 20, tzinfo=UTC).timestamp()) * 10 ** 9
    found = customer_limits(Older(), load_catalog(str(METERS)), args, "cust-002", start,
                            int(DEC.timestamp()) * 10 ** 9)
    assert [(t.label, t.quantity, t.status) for t in found[0].thresholds] == [
        ("50%", 500, "not reached"), ("80%", 800, "not reached"), ("100%", 1000, "not reached")]
