"""Closed periods on the local stack: recompute from `events`, restate atomically, reconcile.

Accepted events (with duplicates the stream's horizon missed) are loaded into
`events` of a dataset of this module's own; `tallyflow recompute` must restate
the period so the `usage` view equals the independent reference, keep every
revision, survive a crash between staging and commit, and `tallyflow reconcile`
must name exactly the windows where the stream differs. Faults injected: a kill
between staging and commit (then the commit retried, twice), a staging batch
re-inserted with fresh insert ids, four commits of one period at once and two
whole recomputes of it at once.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from schemas.events import Limits, UsageEvent, parse_payload
from schemas.values import format_time, parse_rfc3339
from tests.conftest import EXAMPLE_METERS, ROOT
from tests.messy import generate
from tests.reference import expected_usage
from transforms.rows import event_row, usage_pane_row
from transforms.bigquery_target import BigQueryTarget
from transforms.restate import PAUSE_BEFORE_COMMIT_ENV, RecomputeRun, commit_run, create_staging

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
    command = [sys.executable, "-m", "tallyflow.cli", *args]
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


# ---------------------------------------------------------------- retries and concurrency


def target_of(stack):
    return BigQueryTarget(stack.project, DATASET, stack.bigquery_endpoint)


def duplicated_view_keys(client, stack) -> list:
    return [tuple(r.values()) for r in client.query(
        f"SELECT subject, meter, dimensions, window_start, COUNT(*) AS n "
        f"FROM `{stack.project}.{DATASET}.usage` "
        f"GROUP BY subject, meter, dimensions, window_start HAVING COUNT(*) > 1").result()]


def period_revisions(client, stack) -> list[int]:
    return [r["revision"] for r in client.query(
        f"SELECT revision FROM `{stack.project}.{DATASET}.recompute_runs` "
        f"WHERE period_start = '{PERIOD[0]}' AND period_end = '{PERIOD[1]}' "
        f"ORDER BY revision").result()]


def run_rows(client, stack, run_id) -> int:
    return list(client.query(
        f"SELECT COUNT(*) AS n FROM `{stack.project}.{DATASET}.usage_recomputed` "
        f"WHERE run_id = '{run_id}'").result())[0]["n"]


def staging_tables(client, stack) -> list[str]:
    return [t.table_id for t in client.list_tables(f"{stack.project}.{DATASET}")
            if t.table_id.startswith("usage_recomputed__staging_")]


def wait_until_staged(client, stack, rows: int, known: list[str]) -> str:
    """The staging table of a running recompute (not one of `known`, left by earlier
    crashes), once it holds `rows` rows."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for table in set(staging_tables(client, stack)) - set(known):
            n = list(client.query(f"SELECT COUNT(*) AS n FROM "
                                  f"`{stack.project}.{DATASET}.{table}`").result())[0]["n"]
            if n >= rows:
                return table
        time.sleep(1)
    raise AssertionError("the run never finished staging")


def staged_copy(client, stack, run: RecomputeRun, from_run_id: str) -> None:
    """A staging table for `run` holding the committed rows of another run."""
    create_staging(client, target_of(stack), run)
    client.query(f"INSERT INTO `{stack.project}.{DATASET}.{run.staging_table.name}` "
                 f"SELECT * FROM `{stack.project}.{DATASET}.usage_recomputed` "
                 f"WHERE run_id = '{from_run_id}'").result()


def latest_run_id(client, stack) -> str:
    return list(client.query(
        f"SELECT run_id FROM `{stack.project}.{DATASET}.recompute_runs` "
        f"ORDER BY committed_at DESC LIMIT 1").result())[0]["run_id"]


def new_run(run_id: str, reason: str) -> RecomputeRun:
    return RecomputeRun(run_id, parse_rfc3339(PERIOD[0]), parse_rfc3339(PERIOD[1]), HOUR,
                        reason, time.time_ns())


def test_a_killed_run_commits_on_retry_and_every_later_retry_changes_nothing(
        stack, client, messy, loaded):
    before = view(client, stack)
    revisions_before = period_revisions(client, stack)
    known = staging_tables(client, stack)
    process = recompute(stack, "--reason", "killed then retried", wait=False,
                        env_extra={PAUSE_BEFORE_COMMIT_ENV: "120"})
    staging = wait_until_staged(client, stack, len(before), known)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert view(client, stack) == before
    run = new_run(staging.removeprefix("usage_recomputed__staging_").replace("_", "-"),
                  "killed then retried")
    revision = commit_run(client, target_of(stack), run, {"retried": True})
    assert revision == revisions_before[-1] + 1
    assert view(client, stack) == before == reference(messy)
    assert run_rows(client, stack, run.run_id) == len(before)
    # the commit landed but its process died before dropping the staging table
    staged_copy(client, stack, run, run.run_id)
    assert commit_run(client, target_of(stack), run, {"retried": True}) == revision
    # and once more after the staging table is gone
    assert commit_run(client, target_of(stack), run, {"retried": True}) == revision
    assert period_revisions(client, stack) == revisions_before + [revision]
    assert run_rows(client, stack, run.run_id) == len(before)
    assert view(client, stack) == before and not duplicated_view_keys(client, stack)


def test_a_staging_batch_reinserted_after_the_insert_id_window_counts_once(
        stack, client, messy, loaded):
    before = view(client, stack)
    known = staging_tables(client, stack)
    process = recompute(stack, "--reason", "staging re-sent", wait=False,
                        env_extra={PAUSE_BEFORE_COMMIT_ENV: "30"})
    staging = wait_until_staged(client, stack, len(before), known)
    table = f"{stack.project}.{DATASET}.{staging}"
    staged = [dict(r.items()) for r in client.query(f"SELECT * FROM `{table}`").result()]
    for row in staged:
        for column, value in row.items():
            if hasattr(value, "isoformat"):
                row[column] = value.isoformat()
            elif value is not None and not isinstance(value, (str, int, bool)):
                row[column] = str(value)  # Decimal
    for i in range(0, len(staged), 500):  # fresh insert ids: BigQuery cannot drop them
        assert client.insert_rows_json(table, staged[i:i + 500],
                                       row_ids=[None] * len(staged[i:i + 500])) == []
    assert list(client.query(f"SELECT COUNT(*) AS n FROM `{table}`").result())[0]["n"] == \
        2 * len(before)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    run_id = json.loads(out)["run_id"]
    assert run_rows(client, stack, run_id) == len(before)
    assert not duplicated_view_keys(client, stack)
    assert view(client, stack) == reference(messy)


def test_concurrent_commits_of_one_period_take_distinct_revisions(stack, client, messy, loaded):
    before = view(client, stack)
    revisions_before = period_revisions(client, stack)
    source = latest_run_id(client, stack)
    runs = [new_run(f"recompute-concurrent-{n}", f"concurrent {n}") for n in range(4)]
    for run in runs:
        staged_copy(client, stack, run, source)
    barrier = threading.Barrier(len(runs))

    def commit(run):
        own = stack.bigquery_client()
        barrier.wait()
        return commit_run(own, target_of(stack), run, {"concurrent": True})

    with ThreadPoolExecutor(len(runs)) as pool:
        committed = list(pool.map(commit, runs))
    top = revisions_before[-1]
    assert sorted(committed) == list(range(top + 1, top + 1 + len(runs)))
    assert period_revisions(client, stack) == revisions_before + sorted(committed)
    assert all(run_rows(client, stack, run.run_id) == len(before) for run in runs)
    assert not {r.staging_table.name for r in runs} & set(staging_tables(client, stack))
    assert view(client, stack) == before and not duplicated_view_keys(client, stack)


def test_two_recomputes_of_one_period_at_once_both_commit_in_turn(stack, client, messy, loaded):
    revisions_before = period_revisions(client, stack)
    processes = [recompute(stack, "--reason", f"at once {n}", wait=False) for n in range(2)]
    summaries = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        summaries.append(json.loads(out))
    top = revisions_before[-1]
    assert sorted(s["revision"] for s in summaries) == [top + 1, top + 2]
    assert period_revisions(client, stack) == revisions_before + [top + 1, top + 2]
    assert not duplicated_view_keys(client, stack)
    assert view(client, stack) == reference(messy)


def test_an_aggregate_beyond_numeric_is_recorded_and_the_run_not_committed(
        stack, client, example_catalog):
    """Two valid bytes_out values whose sum NUMERIC cannot hold: the run says which meter
    and window and to declare BIGNUMERIC, the row is in failed_writes, nothing commits."""
    day = ("2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z")
    value = "9" * 29  # the largest NUMERIC integer
    events = []
    for n in (1, 2):
        line = json.dumps({"specversion": "1.0", "id": f"huge-{n}", "source": "//huge",
                           "type": "api.request", "subject": "cust-huge",
                           "time": f"2026-12-05T10:0{n}:00Z",
                           "data": {"method": "GET", "bytes_out": value}}).encode()
        (event,) = parse_payload(line, f"huge-{n}", (n,), example_catalog, Limits(now_ns=None),
                                 ingest_ns=parse_rfc3339("2026-12-06T00:00:00Z") + n)
        events.append(event_row(event, "loader"))
    assert client.insert_rows_json(f"{stack.project}.{DATASET}.events",
                                   [r for _, r in events], row_ids=[k for k, _ in events]) == []
    result = tallyflow(stack, "recompute", "--meters", str(EXAMPLE_METERS), "--bigquery_dataset",
                       DATASET, "--period-start", day[0], "--period-end", day[1])
    assert result.returncode == 3, result.stderr[-3000:]  # a runtime failure (SPEC exit codes)
    assert "'bytes_out', window 2026-12-05T10:00:00Z .. 2026-12-05T11:00:00Z" in result.stderr
    assert "declare the meter `precision: BIGNUMERIC`" in result.stderr
    assert "not committed" in result.stderr
    failed = [dict(r.items()) for r in client.query(
        f"SELECT * FROM `{stack.project}.{DATASET}.failed_writes` "
        f"WHERE error_code = 'VALUE_OUT_OF_RANGE'").result()]
    assert len(failed) == 1 and failed[0]["parts"] == 1
    assert failed[0]["table_name"].startswith("usage_recomputed__staging_")
    row = json.loads(failed[0]["content"])
    assert (row["subject"], row["meter"], row["value"], row["event_count"]) == \
        ("cust-huge", "bytes_out", str(2 * int(value)), 2)
    assert not list(client.query(
        f"SELECT run_id FROM `{stack.project}.{DATASET}.recompute_runs` "
        f"WHERE period_start = '{day[0]}'").result())
