"""Decisions on the BigQuery side, on the local stack, with rows written by hand:

- the `usage` view picks a window's pane by emission and then pane order, so a
  restarted job (pane index from 0 again) supersedes the job before it;
- reconcile calls a row that differs only in its fingerprint a mismatch, BIGNUMERIC
  values included, and exits 1;
- a rating commits only against the revision it read (stale guard), checked inside its
  commit's transaction, and of two ratings that committed the same revision one stays;
  a rating with nothing to bill commits nothing.
"""
import dataclasses
import os
import subprocess
import sys
import time

import pytest

from tallyflow.reports import reconcile
from tests.conftest import ROOT
from tests.e2e.test_rate import write_prices
from transforms.bigquery_target import BigQueryTarget
from schemas.tables import INVOICES
from schemas.values import parse_rfc3339
from schemas.tables import INVOICE_LINES
from transforms.rating import (RatingRun, StaleRating, commit_rating, create_staging,
                               latest_revision)

DATASET = "guards_test"
SUBJECT = "guard-co"
# 18 fraction digits, beyond NUMERIC's 9; within the emulator's BIGNUMERIC (docs/local.md)
BIG = "12345678901234567890.123456789012345678"
BIG_PLUS_ULP = "12345678901234567890.123456789012345679"


@pytest.fixture(scope="module")
def client(stack):
    return stack.bigquery_client()


def table(stack, name: str) -> str:
    return f"{stack.project}.{DATASET}.{name}"


def at(clock: str, day: str = "2026-10-05") -> str:
    return f"{day}T{clock}Z"


def pane(window: str, index: int, value: str, emitted: str, job: str) -> dict:
    hour = int(window[:2])
    return {"subject": SUBJECT, "meter": "calls", "dimensions": "{}",
            "window_start": at(window), "window_end": at(f"{hour + 1:02d}:00:00"),
            "value": value, "event_count": 1, "fingerprint": "f",
            "pane_timing": "EARLY" if index == 0 else "LATE", "pane_index": index,
            "is_final": False, "emitted_at": emitted, "job_id": job,
            "row_id": f"{job}:{window}:{index}"}


def usage_view(client, stack) -> dict:
    rows = client.query(
        f"SELECT window_start, value, origin FROM `{table(stack, 'usage')}` "
        f"WHERE subject = '{SUBJECT}' AND meter = 'calls'").result()
    return {r["window_start"].strftime("%H:%M"): (str(r["value"]), r["origin"]) for r in rows}


def test_the_usage_view_takes_the_latest_pane_across_a_restart(stack, client):
    panes = [
        # 08:00: job A's panes 0 and 1, then a restarted job B's pane 0 (its replay)
        pane("08:00:00", 0, "1", at("08:10:00"), "job-a"),
        pane("08:00:00", 1, "2", at("09:05:00"), "job-a"),
        pane("08:00:00", 0, "3", at("09:30:00"), "job-b"),
        # 09:00: two panes emitted in the same microsecond: the pane order decides
        pane("09:00:00", 1, "6", at("10:00:00"), "job-a"),
        pane("09:00:00", 0, "5", at("10:00:00"), "job-a"),
    ]
    assert client.insert_rows_json(table(stack, "usage_panes"), panes) == []
    assert usage_view(client, stack) == {
        "08:00": ("3", "stream"), "09:00": ("6", "stream")}


def test_reconcile_reports_a_fingerprint_only_difference(stack, client):
    day, run = "2026-10-06", "recompute-guards"
    period = (at("00:00:00", day), at("03:00:00", day))

    def usage(hour, meter, value, fingerprint, big):
        return {"subject": SUBJECT, "meter": meter, "dimensions": "{}",
                "window_start": at(f"{hour:02d}:00:00", day),
                "window_end": at(f"{hour + 1:02d}:00:00", day), "event_count": 2,
                "value": None if big else value, "value_bignumeric": value if big else None,
                "fingerprint": fingerprint}

    pairs = [  # (hour, meter, stream value, stream fp, batch value, batch fp, big)
        (0, "calls", "7", "aaaa", "7", "aaaa", False),          # match
        (1, "calls", "7", "aaaa", "7", "bbbb", False),          # fingerprint only
        (0, "stake", BIG, "cccc", BIG, "cccc", True),           # BIGNUMERIC match
        (2, "stake", BIG, "cccc", BIG_PLUS_ULP, "cccc", True),  # in the 18th fraction digit
    ]
    panes, recomputed = [], []
    for hour, meter, s_value, s_fp, b_value, b_fp, big in pairs:
        panes.append({**usage(hour, meter, s_value, s_fp, big), "pane_timing": "ON_TIME",
                      "pane_index": 0, "is_final": True, "emitted_at": period[1],
                      "job_id": "job-a", "row_id": f"r:{meter}:{hour}"})
        recomputed.append({**usage(hour, meter, b_value, b_fp, big), "revision": 1, "run_id": run,
                           "recomputed_at": period[1], "reason": "close",
                           "period_start": period[0], "period_end": period[1]})
    errors = client.insert_rows_json(table(stack, "usage_panes"), panes)
    assert errors == [], [e for e in errors if e["errors"][0]["reason"] != "stopped"]
    assert client.insert_rows_json(table(stack, "usage_recomputed"), recomputed) == []
    assert client.insert_rows_json(table(stack, "recompute_runs"), [{
        "run_id": run, "revision": 1, "period_start": period[0], "period_end": period[1],
        "window_seconds": 3600, "reason": "close", "started_at": period[1],
        "committed_at": period[1]}]) == []

    code = reconcile.main(["--period-start", period[0], "--period-end", period[1],
                           "--bigquery_project", stack.project, "--bigquery_dataset", DATASET,
                           "--bigquery_endpoint", stack.bigquery_endpoint])
    assert code == 1
    statuses = client.query(
        f"SELECT meter, FORMAT_TIMESTAMP('%H', window_start) AS hour, status, "
        f"stream_fingerprint, batch_fingerprint FROM `{table(stack, 'reconciliation')}`").result()
    assert {(r["meter"], r["hour"]): (r["status"], r["stream_fingerprint"],
                                      r["batch_fingerprint"]) for r in statuses} == {
        ("calls", "00"): ("match", "aaaa", "aaaa"),
        ("calls", "01"): ("value_mismatch", "aaaa", "bbbb"),
        ("stake", "00"): ("match", "cccc", "cccc"),
        ("stake", "02"): ("value_mismatch", "cccc", "cccc"),
    }


def rating_run(period, revision: int) -> RatingRun:
    return RatingRun(f"rate-guard-{revision}-{time.time_ns() % 10 ** 6}",
                     int(period[0]), int(period[1]), revision, time.time_ns(), "test")


def test_a_stale_rating_is_refused_and_leaves_nothing(stack, client):
    period = (parse_rfc3339(at("00:00:00", "2026-09-01")),
              parse_rfc3339(at("00:00:00", "2026-10-01")))
    target = BigQueryTarget(stack.project, DATASET, stack.bigquery_endpoint)
    assert latest_revision(client, target, *period) == 0
    run = rating_run(period, revision=2)  # it read revision 1, which nobody committed
    create_staging(client, target, run)
    with pytest.raises(RuntimeError, match="rate again"):
        commit_rating(client, target, run)
    assert latest_revision(client, target, *period) == 0
    staging = target.table_id(run.staging(INVOICES))
    assert not [t for t in client.list_tables(f"{stack.project}.{DATASET}")
                if f"{t.project}.{t.dataset_id}.{t.table_id}" == staging]


def test_a_rating_with_nothing_to_bill_commits_no_revision(stack, client, tmp_path):
    """Before every assignment of the price book: no usage, no subject, no line."""
    env = {**os.environ, **stack.env()}
    result = subprocess.run(
        [sys.executable, "-m", "tallyflow.cli", "rate",
         "--prices", write_prices(tmp_path, retroactive=False), "--bigquery_dataset", DATASET,
         "--period-start", "2025-08-01T00:00:00Z", "--period-end", "2025-09-01T00:00:00Z"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"committed": false' in result.stdout
    count = list(client.query(f"SELECT COUNT(*) AS n FROM `{table(stack, 'invoices')}`")
                 .result())[0]["n"]
    assert count == 0


# ---------------------------------------------------------------- two ratings at once


def staged_rows(run: RatingRun) -> dict:
    """One invoice line and one invoice of the run, as its staging tables hold them."""
    common = {**run.common(), "subject": SUBJECT, "currency": "USD"}
    return {INVOICE_LINES: {**common, "plan": "std", "plan_version": 1, "dimensions": "{}",
                            "kind": "usage", "line_type": "charge", "unrounded_amount": "1",
                            "amount": "1.00"},
            INVOICES: {**common, "total": "1.00", "line_count": 1}}


def stage(client, target, run: RatingRun) -> None:
    create_staging(client, target, run)
    for table, row in staged_rows(run).items():
        assert client.insert_rows_json(target.table_id(run.staging(table)), [row]) == []


def holders(client, stack, period, revision: int) -> dict:
    """{table: run ids} holding `revision` of the period."""
    found = {}
    for name in ("invoice_lines", "invoices"):
        rows = client.query(
            f"SELECT DISTINCT run_id FROM `{table(stack, name)}` WHERE revision = {revision} "
            f"AND period_start = TIMESTAMP_MICROS({period[0] // 1000}) "
            f"AND period_end = TIMESTAMP_MICROS({period[1] // 1000})").result()
        found[name] = {r["run_id"] for r in rows}
    return found


class Interleaved:
    """The client, except that `before_commit` runs just before, and `after_commit` just
    after, the first commit transaction sent through it."""

    def __init__(self, client, before_commit=None, after_commit=None):
        self._client, self._before, self._after = client, before_commit, after_commit

    def __getattr__(self, name):
        return getattr(self._client, name)

    def query(self, sql, *args, **kwargs):
        commit = sql.startswith("BEGIN TRANSACTION") and "INSERT INTO" in sql
        before, after = (self._before, self._after) if commit else (None, None)
        if commit:
            self._before = self._after = None
        if before:
            before()
        job = self._client.query(sql, *args, **kwargs)
        if after:
            job.result()
            after()
        return job


def named_run(period, name: str) -> RatingRun:
    return dataclasses.replace(rating_run(period, revision=1), run_id=f"rate-guard-{name}")


def month(n: int):
    return (parse_rfc3339(f"2026-0{n}-01T00:00:00Z"), parse_rfc3339(f"2026-0{n + 1}-01T00:00:00Z"))


def test_a_rating_committed_while_another_commits_makes_the_other_stale(stack, client):
    """B commits between A's last look at the revisions and A's own commit: A's
    transaction itself sees B's revision and inserts nothing."""
    period = month(5)
    target = BigQueryTarget(stack.project, DATASET, stack.bigquery_endpoint)
    first, second = named_run(period, "first"), named_run(period, "second")
    for run in (first, second):
        stage(client, target, run)
    racing = Interleaved(client, before_commit=lambda: commit_rating(client, target, second))
    with pytest.raises(StaleRating, match="revision 1 of the period was committed while "
                                          f"{first.run_id} ran against revision 0: rate again"):
        commit_rating(racing, target, first)
    assert holders(client, stack, period, 1) == {"invoice_lines": {second.run_id},
                                                 "invoices": {second.run_id}}
    assert latest_revision(client, target, *period) == 1
    staging = {target.table_id(first.staging(t)) for t in (INVOICE_LINES, INVOICES)}
    assert not [t for t in client.list_tables(f"{stack.project}.{DATASET}")
                if f"{t.project}.{t.dataset_id}.{t.table_id}" in staging]


@pytest.mark.parametrize("rival_final", [False, True])
def test_of_two_ratings_that_committed_the_same_revision_one_stays(stack, client, rival_final):
    """Both transactions landed (they overlapped): the run that committed here gives way
    to a rival that is final, or that is first by run id, and takes its rows back."""
    period = month(6 + rival_final)
    target = BigQueryTarget(stack.project, DATASET, stack.bigquery_endpoint)
    a, b = named_run(period, f"a{rival_final:d}"), named_run(period, f"b{rival_final:d}")
    mine, rival = (a, b) if rival_final else (b, a)  # a is the first by run id
    stage(client, target, mine)
    if not rival_final:
        create_staging(client, target, rival)  # still staged: not final yet

    def rival_lands():
        for t, row in staged_rows(rival).items():
            assert client.insert_rows_json(target.table_id(t), [row]) == []

    with pytest.raises(StaleRating, match="rate again"):
        commit_rating(Interleaved(client, after_commit=rival_lands), target, mine)
    assert holders(client, stack, period, 1) == {"invoice_lines": {rival.run_id},
                                                 "invoices": {rival.run_id}}
