"""The queries of docs/analysts.md, run verbatim on the local stack.

A small known month (June 2025, customer `analyst-co`) is streamed-in by hand
(events and panes, one pane missing an event that arrived too late), then
recomputed by `tallyflow recompute`; each documented query must run as written
and return what that month implies.
"""
import json
import os
import re
import subprocess
import sys
from decimal import Decimal

import pytest
from google.cloud import bigquery

from schemas.events import Limits, Rejection, UsageEvent, parse_payload
from schemas.values import format_time, parse_rfc3339
from tests.conftest import EXAMPLE_METERS, ROOT
from transforms.rows import dead_letter_row, event_row, usage_pane_row

DOC = ROOT / "docs" / "analysts.md"
SUBJECT = "analyst-co"


def documented_queries() -> dict[str, str]:
    text = DOC.read_text()
    return dict(re.findall(r"<!-- query: (\w+) -->\s*```sql\n(.*?)```", text, re.S))


def documented_python() -> dict[str, str]:
    return dict(re.findall(r"<!-- python: (\w+) -->\s*```python\n(.*?)```", DOC.read_text(), re.S))


def api_request(n: int, hour: int, method: str, bytes_out: int) -> bytes:
    return json.dumps({
        "specversion": "1.0", "id": f"an-{n}", "source": "//analysts", "type": "api.request",
        "subject": SUBJECT, "time": f"2025-06-{10 + n % 3:02d}T{hour:02d}:15:00Z",
        "data": {"method": method, "bytes_out": bytes_out}}).encode()


@pytest.fixture(scope="module")
def month(local_stack, example_catalog):
    client = local_stack.bigquery_client()
    table = lambda name: f"{local_stack.project}.{local_stack.dataset}.{name}"  # noqa: E731
    payloads = [api_request(n, 9, "GET" if n % 2 else "POST", 1000 + n) for n in range(9)]
    events = [result for n, payload in enumerate(payloads)
              for result in parse_payload(payload, f"an-msg-{n}", (n,), example_catalog,
                                          Limits(now_ns=None),
                                          ingest_ns=parse_rfc3339("2025-06-20T00:00:00Z"))]
    assert all(isinstance(e, UsageEvent) for e in events)
    assert client.insert_rows_json(table("events"), [event_row(e, "an-job")[1]
                                                    for e in events]) == []
    # the stream saw every event but the last (it arrived too late)
    panes = {}
    for e in events[:-1]:
        for r in e.readings:
            key = (r.meter, r.dimensions, e.time_ns - e.time_ns % (3600 * 10 ** 9))
            value, count = panes.get(key, (Decimal(0), 0))
            panes[key] = (value + (r.value if r.value is not None else 1), count + 1)
    rows = [usage_pane_row({"subject": SUBJECT, "meter": m, "dimensions": d,
                            "window_start": format_time(w),
                            "window_end": format_time(w + 3600 * 10 ** 9),
                            "value": str(v), "event_count": c, "fingerprint": "f",
                            "pane_timing": "ON_TIME", "pane_index": 0, "is_final": False},
                           False, parse_rfc3339("2025-06-20T00:00:00Z"), "an-job")[1]
            for (m, d, w), (v, c) in panes.items()]
    assert client.insert_rows_json(table("usage_panes"), rows) == []
    rejected = parse_payload(b"{broken", "an-bad", (0,), example_catalog, Limits(now_ns=None),
                             ingest_ns=parse_rfc3339("2025-06-20T00:00:00Z"))[0]
    assert isinstance(rejected, Rejection)
    assert client.insert_rows_json(table("dead_letter"),
                                   [dead_letter_row(rejected, "test", "an-job")[1]]) == []
    env = {**os.environ, **local_stack.env()}
    result = subprocess.run(
        [sys.executable, "-m", "tallyflow.cli", "recompute", "--meters", str(EXAMPLE_METERS),
         "--period-start", "2025-06-01T00:00:00Z", "--period-end", "2025-07-01T00:00:00Z",
         "--reason", "june close"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return client, events


def run(client, name, **params):
    config = bigquery.QueryJobConfig(query_parameters=[
        bigquery.ScalarQueryParameter(k, "TIMESTAMP", v) for k, v in params.items()])
    return [dict(r.items()) for r in client.query(documented_queries()[name],
                                                  job_config=config).result()]


def test_every_documented_query_is_tested():
    assert set(documented_queries()) == {"monthly_usage", "top_meters", "provisional_vs_final",
                                         "corrections_since", "dead_letters_by_code",
                                         "lineage"}


def test_usage_frame_reads_the_view_into_pandas_exactly(month, local_stack, monkeypatch):
    client, events = month
    for name, value in local_stack.env().items():
        monkeypatch.setenv(name, value)
    scope = {}
    exec(documented_python()["usage_frame"], scope)
    usage, totals = scope["usage"], scope["totals"]
    assert str(usage["value"].dtype) == "decimal128(38, 9)[pyarrow]"
    assert totals.to_dict() == {
        "api_requests": Decimal(9),
        "bytes_out": Decimal(sum(1000 + n for n in range(9))),
    }
    assert set(usage["origin"]) == {"recompute"}
    assert usage["event_count"].sum() == 2 * len(events)


def test_monthly_usage(month):
    client, events = month
    rows = [r for r in run(client, "monthly_usage") if r["subject"] == SUBJECT]
    by_meter = {r["meter"]: (r["total"], r["events"], r["final"]) for r in rows}
    assert by_meter == {
        "api_requests": (Decimal(9), 9, True),
        "bytes_out": (Decimal(sum(1000 + n for n in range(9))), 9, True),
    }
    assert {str(r["month"]) for r in rows} == {"2025-06-01"}


def test_top_meters(month):
    client, _ = month
    rows = run(client, "top_meters", period_start="2025-06-01T00:00:00Z",
               period_end="2025-07-01T00:00:00Z")
    assert [(r["meter"], r["events"], r["customers"]) for r in rows] == [
        ("api_requests", 9, 1), ("bytes_out", 9, 1)]


def test_provisional_vs_final(month):
    client, _ = month
    rows = {r["origin"]: r for r in run(client, "provisional_vs_final")}
    assert rows["recompute"]["usage_rows"] >= 8  # 3 days x (2 methods + bytes) - no-POST days


def test_corrections_since(month):
    client, events = month
    rows = [r for r in run(client, "corrections_since", since="2025-01-01T00:00:00Z")
            if r["subject"] == SUBJECT]
    late = events[-1]
    late_window = {r["window_start"].strftime("%Y-%m-%dT%H") for r in rows}
    assert late_window == {"2025-06-%02dT09" % (10 + 8 % 3)}
    for row in rows:
        assert row["reason"] == "june close"
        assert row["correction"] == row["final_value"] - row["streamed_value"] > 0
    assert {r["meter"] for r in rows} == {r.meter for r in late.readings}


def test_dead_letters_by_code(month):
    client, _ = month
    rows = run(client, "dead_letters_by_code", since="2025-06-01T00:00:00Z")
    assert "MALFORMED_JSON" in {r["error_code"] for r in rows}


def test_lineage(month):
    client, events = month
    config = bigquery.QueryJobConfig(query_parameters=[
        bigquery.ScalarQueryParameter("subject", "STRING", SUBJECT),
        bigquery.ScalarQueryParameter("event_type", "STRING", "api.request"),
        bigquery.ScalarQueryParameter("window_start", "TIMESTAMP", "2025-06-12T09:00:00Z"),
        bigquery.ScalarQueryParameter("window_end", "TIMESTAMP", "2025-06-12T10:00:00Z")])
    rows = [dict(r.items()) for r in client.query(documented_queries()["lineage"],
                                                  job_config=config).result()]
    window = parse_rfc3339("2025-06-12T09:00:00Z")
    behind = {e.id for e in events if window <= e.time_ns < window + 3600 * 10 ** 9}
    assert behind == {"an-2", "an-5", "an-8"}  # an-8 reached only the recompute
    assert {r["id"] for r in rows if r["counted"]} == behind
    (row,) = client.query(
        "SELECT event_count FROM metering.usage WHERE subject = @subject "
        "AND meter = 'bytes_out' AND window_start = @window_start", job_config=config).result()
    assert row["event_count"] == len(behind)
