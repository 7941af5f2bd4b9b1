"""Closed periods on the local stack: recompute from `events`, restate atomically, reconcile.

Accepted events (with duplicates the stream's horizon missed) are loaded into
`events` of a dataset of this module's own; `tallyflow recompute` must restate
the period so the `usage` view equals the independent reference, keep every
revision, survive a crash between staging and commit, and `tallyflow reconcile`
must name exactly the windows where the stream differs.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from schemas.events import Limits, UsageEvent, parse_payload
from schemas.values import format_time, parse_rfc3339
from tests.conftest import EXAMPLE_METERS, ROOT
from tests.messy import generate
from tests.reference import expected_usage
from transforms.rows import event_row, usage_pane_row
from transforms.restate import PAUSE_BEFORE_COMMIT_ENV

DATASET = "restate_test"
HOUR = 3600 * 10 ** 9
PERIOD = ("2026-11-01T00:00:00Z", "2026-11-04T00:00:00Z")


@pytest.fixture(scope="module")
def client(stack):
    return stack.bigquery_client()


@pytest.fixture(scope="module")
def messy():
    return generate(seed=7, events=1200)


@pytest.fixture(scope="module")
def loaded(stack, client, messy, example_catalog):
    """Every valid copy goes into `events`, ingested in line order (first copy first)."""
    rows = []
    ingest = parse_rfc3339("2026-11-10T00:00:00Z")
    for n, line in enumerate(messy.lines, start=1):
        for result in parse_payload(line, f"msg-{n}", (n,), example_catalog,
                                    Limits(now_ns=None), ingest_ns=ingest + n * 1000):
            if isinstance(result, UsageEvent):
                rows.append(event_row(result, "loader"))
    table = f"{stack.project}.{DATASET}.events"
    for i in range(0, len(rows), 500):
        batch = rows[i:i + 500]
        assert client.insert_rows_json(table, [r for _, r in batch],
                                       row_ids=[k for k, _ in batch]) == []
    return len(rows)


def tallyflow(stack, *args, env_extra=None, wait=True):
    env = {**os.environ, **stack.env(), **(env_extra or {})}
    command = [sys.executable, "-m", "pipelines.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def recompute(stack, *extra, **kwargs):
    return tallyflow(stack, "recompute", "--meters", str(EXAMPLE_METERS), "--bigquery_dataset",
                     DATASET, "--period-start", PERIOD[0], "--period-end", PERIOD[1], *extra,
                     **kwargs)


def view(client, stack, column=None) -> dict:
    """{key: (value, event_count)} of the `usage` view, or {key: column}."""
    rows = client.query(f"SELECT * FROM `{stack.project}.{DATASET}.usage`").result()
    return {(r["subject"], r["meter"], r["dimensions"],
             parse_rfc3339(r["window_start"].strftime("%Y-%m-%dT%H:%M:%SZ"))):
            r[column] if column else (r["value"], r["event_count"]) for r in rows}


def reference(messy) -> dict:
    meters = yaml.safe_load(EXAMPLE_METERS.read_text())["meters"]
    return expected_usage(messy.accepted, meters, HOUR)


def revisions(client, stack) -> list[tuple]:
    rows = client.query(f"SELECT revision, reason FROM `{stack.project}.{DATASET}.recompute_runs` "
                        "ORDER BY revision").result()
    return [(r["revision"], r["reason"]) for r in rows]


def test_recompute_restates_the_period_exactly(stack, client, messy, loaded):
    result = recompute(stack, "--reason", "first close")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["revision"] == 1
    assert summary["events_accepted"] == len(messy.accepted)
    assert summary["duplicates"] == loaded - len(messy.accepted)
    assert summary["conservation"]["holds"]
    assert view(client, stack) == reference(messy)


def test_a_rerun_adds_a_revision_with_identical_values(stack, client, messy, loaded):
    before = view(client, stack)
    result = recompute(stack, "--reason", "rerun")
    assert result.returncode == 0, result.stderr[-3000:]
    assert view(client, stack) == before
    assert revisions(client, stack) == [(1, "first close"), (2, "rerun")]
    by_revision = client.query(
        f"SELECT revision, COUNT(*) AS n, SUM(event_count) AS events "
        f"FROM `{stack.project}.{DATASET}.usage_recomputed` GROUP BY revision ORDER BY revision"
    ).result()
    first, second = [(r["n"], r["events"]) for r in by_revision]
    assert first == second


def test_a_crash_between_staging_and_commit_changes_nothing(stack, client, messy, loaded):
    before = view(client, stack)
    process = recompute(stack, "--reason", "crashed", wait=False,
                        env_extra={PAUSE_BEFORE_COMMIT_ENV: "120"})
    staged = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and staged < len(before):
        tables = [t.table_id for t in client.list_tables(f"{stack.project}.{DATASET}")
                  if t.table_id.startswith("usage_recomputed__staging_")]
        if tables:
            staged = list(client.query(
                f"SELECT COUNT(*) AS n FROM `{stack.project}.{DATASET}.{tables[0]}`"
            ).result())[0]["n"]
        time.sleep(1)
    assert staged == len(before), "the run never finished staging"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert view(client, stack) == before
    assert [r for r, _ in revisions(client, stack)] == [1, 2]
    result = recompute(stack, "--reason", "after crash")
    assert result.returncode == 0, result.stderr[-3000:]
    assert revisions(client, stack)[-1] == (3, "after crash")
    assert view(client, stack) == before


def test_reconcile_names_exactly_the_windows_where_the_stream_differs(stack, client, messy,
                                                                      loaded):
    expected = reference(messy)
    fingerprints = view(client, stack, "fingerprint")  # the stream saw the same events
    keys = sorted(expected)
    wrong, missing = keys[0], keys[1]
    panes = []
    for key in keys:
        if key == missing:
            continue
        subject, meter, dims, window = key
        value, count = expected[key]
        if key == wrong:
            value, count = value + 1, count + 1
        row = {"subject": subject, "meter": meter, "dimensions": dims,
               "window_start": format_time(window), "window_end": format_time(window + HOUR),
               "value": format(value, "f"), "event_count": count,
               "fingerprint": fingerprints[key],
               "pane_timing": "ON_TIME", "pane_index": 0, "is_final": True}
        panes.append(usage_pane_row(row, False, parse_rfc3339("2026-11-05T00:00:00Z"), "job-x"))
    table = f"{stack.project}.{DATASET}.usage_panes"
    for i in range(0, len(panes), 500):
        batch = panes[i:i + 500]
        assert client.insert_rows_json(table, [r for _, r in batch],
                                       row_ids=[k for k, _ in batch]) == []
    result = tallyflow(stack, "reconcile", "--bigquery_dataset", DATASET,
                       "--period-start", PERIOD[0], "--period-end", PERIOD[1])
    assert result.returncode == 1, result.stderr
    assert "value_mismatch     1" in result.stdout
    assert "missing_in_stream  1" in result.stdout
    assert f"match              {len(keys) - 2}" in result.stdout
    # the view still shows the recomputed (authoritative) values
    assert view(client, stack) == expected


def test_reconcile_refuses_a_period_nothing_recomputed(stack):
    result = tallyflow(stack, "reconcile", "--bigquery_dataset", DATASET,
                       "--period-start", "2026-12-01T00:00:00Z",
                       "--period-end", "2026-12-02T00:00:00Z")
    assert result.returncode == 2
    assert "no recompute covers" in result.stderr


def test_dirty_recomputes_exactly_the_windows_late_events_marked(stack, client, messy, loaded):
    late_windows = ["2026-11-01T05:00:00Z", "2026-11-01T06:00:00Z", "2026-11-02T17:00:00Z"]
    now = time.time_ns()  # after every earlier run: these windows are dirty again
    rows = [{"source": "//late", "id": f"late-{n}", "subject": "cust-000", "type": "api.request",
             "time": start, "window_start": start,
             "window_end": format_time(parse_rfc3339(start) + HOUR),
             "ingest_time": format_time(now - now % 1000), "lateness_seconds": "3600",
             "job_id": "job-x"} for n, start in enumerate(late_windows)]
    assert client.insert_rows_json(f"{stack.project}.{DATASET}.late_events", rows) == []
    result = tallyflow(stack, "recompute", "--meters", str(EXAMPLE_METERS),
                       "--bigquery_dataset", DATASET, "--dirty")
    assert result.returncode == 0, result.stderr[-3000:]
    periods = client.query(
        f"SELECT period_start, period_end, reason FROM `{stack.project}.{DATASET}.recompute_runs`"
        f" WHERE reason LIKE 'too-late%' ORDER BY period_start").result()
    assert [(r["period_start"].strftime("%dT%H"), r["period_end"].strftime("%dT%H"))
            for r in periods] == [("01T05", "01T07"), ("02T17", "02T18")]
    dirty = {parse_rfc3339(start) for start in late_windows}
    assert {k: v for k, v in view(client, stack).items() if k[3] in dirty} == \
        {k: v for k, v in reference(messy).items() if k[3] in dirty}
    again = tallyflow(stack, "recompute", "--meters", str(EXAMPLE_METERS),
                      "--bigquery_dataset", DATASET, "--dirty")
    assert again.returncode == 0 and "nothing to recompute" in again.stderr
