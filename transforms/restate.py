"""Restating a closed period in BigQuery: read its events, stage, commit atomically.

A recompute run writes its rows to a staging table of its own, then one
transaction appends them to `usage_recomputed` together with the run's row in
`recompute_runs`. The `usage` view only shows rows of runs in
`recompute_runs`, so a run is invisible until that commit and whole after it;
a run that dies before it leaves only a staging table behind. History is
append-only: every revision stays queryable.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import apache_beam as beam

from schemas.tables import EVENTS, RECOMPUTE_RUNS, USAGE_RECOMPUTED, Table
from schemas.values import format_time
from transforms.bigquery import BigQueryTarget, QueryRows, Written, total_written
from transforms.rows import checked_usage, usage_value_columns

# Fault injection for the crash test: seconds to sleep between staging and commit.
PAUSE_BEFORE_COMMIT_ENV = "TALLYFLOW_PAUSE_BEFORE_COMMIT"


@dataclass(frozen=True)
class RecomputeRun:
    run_id: str
    period_start_ns: int
    period_end_ns: int
    window_ns: int
    reason: str
    started_ns: int

    @property
    def staging_table(self) -> Table:
        suffix = self.run_id.replace("-", "_")
        return USAGE_RECOMPUTED.renamed(f"usage_recomputed__staging_{suffix}")

    def row(self, usage: dict, bignumeric: bool) -> tuple[str, dict]:
        """A usage row as a staging row (revision and commit time are set at commit);
        UnwritableRow when its value does not fit the meter's column."""
        key = f"{self.run_id}:{usage['subject']}:{usage['meter']}:{usage['dimensions']}:" \
              f"{usage['window_start']}"
        return checked_usage(key, {
            **{k: usage[k] for k in ("subject", "meter", "dimensions", "window_start",
                                     "window_end", "event_count", "fingerprint")},
            **usage_value_columns(usage["value"], bignumeric),
            "revision": 0,
            "run_id": self.run_id,
            "recomputed_at": format_time(self.started_ns - self.started_ns % 1000),
            "reason": self.reason,
            "period_start": format_time(self.period_start_ns),
            "period_end": format_time(self.period_end_ns),
        })


class ReadPeriodEvents(beam.PTransform):
    """The accepted events of [start, end) from `events`, as payloads for ParseEvents.

    The earliest ingested copy of an identity sorts first, so deduplication
    keeps what streaming kept.
    """

    def __init__(self, target: BigQueryTarget, start_ns: int, end_ns: int):
        super().__init__()
        self._target = target
        self._start, self._end = start_ns, end_ns

    def expand(self, pbegin):
        sql = (f"SELECT raw, message_id, UNIX_MICROS(ingest_time) AS ingest_us "
               f"FROM `{self._target.table_id(EVENTS)}` "
               f"WHERE time >= @period_start AND time < @period_end")
        params = [("period_start", "TIMESTAMP", format_time(self._start)),
                  ("period_end", "TIMESTAMP", format_time(self._end))]
        return (pbegin
                | "Query" >> QueryRows(self._target, sql, params)
                | "AsPayloads" >> beam.Map(lambda r: (
                    r["message_id"] or "", (r["ingest_us"], r["message_id"] or ""),
                    r["raw"].encode("utf-8"), r["ingest_us"] * 1000, {})))


def create_staging(client, target: BigQueryTarget, run: RecomputeRun) -> None:
    client.create_table(run.staging_table.bigquery_table(target.project, target.dataset))


def commit_run(client, target: BigQueryTarget, run: RecomputeRun, summary: dict) -> int:
    """Appends the staged rows and the run's row in one transaction; returns the revision."""
    from google.cloud import bigquery

    pause = float(os.environ.get(PAUSE_BEFORE_COMMIT_ENV, "0") or 0)  # float-ok: seconds
    if pause:
        time.sleep(pause)
    runs, usage = target.table_id(RECOMPUTE_RUNS), target.table_id(USAGE_RECOMPUTED)
    period = [bigquery.ScalarQueryParameter("period_start", "TIMESTAMP",
                                            format_time(run.period_start_ns)),
              bigquery.ScalarQueryParameter("period_end", "TIMESTAMP",
                                            format_time(run.period_end_ns))]
    previous = list(client.query(
        f"SELECT COALESCE(MAX(revision), 0) AS revision FROM `{runs}` "
        f"WHERE period_start = @period_start AND period_end = @period_end",
        job_config=bigquery.QueryJobConfig(query_parameters=period)).result())
    revision = previous[0]["revision"] + 1
    columns = ", ".join(USAGE_RECOMPUTED.column_names())
    copied = ", ".join("@revision" if c == "revision" else "@committed_at" if c == "recomputed_at"
                       else c for c in USAGE_RECOMPUTED.column_names())
    committed_at = time.time_ns()
    params = period + [
        bigquery.ScalarQueryParameter("revision", "INT64", revision),
        bigquery.ScalarQueryParameter("run_id", "STRING", run.run_id),
        bigquery.ScalarQueryParameter("window_seconds", "INT64", run.window_ns // 10 ** 9),
        bigquery.ScalarQueryParameter("reason", "STRING", run.reason),
        bigquery.ScalarQueryParameter("started_at", "TIMESTAMP",
                                      format_time(run.started_ns - run.started_ns % 1000)),
        bigquery.ScalarQueryParameter("committed_at", "TIMESTAMP",
                                      format_time(committed_at - committed_at % 1000)),
        bigquery.ScalarQueryParameter("summary", "STRING", json.dumps(summary, sort_keys=True)),
    ]
    client.query(f"""
BEGIN TRANSACTION;
INSERT INTO `{usage}` ({columns})
SELECT {copied} FROM `{target.table_id(run.staging_table)}`;
INSERT INTO `{runs}` (run_id, revision, period_start, period_end, window_seconds, reason,
                      started_at, committed_at, summary)
VALUES (@run_id, @revision, @period_start, @period_end, @window_seconds, @reason, @started_at,
        @committed_at, @summary);
COMMIT TRANSACTION;
""", job_config=bigquery.QueryJobConfig(query_parameters=params)).result()
    client.delete_table(target.table_id(run.staging_table), not_found_ok=True)
    return revision


class _Commit(beam.DoFn):
    def __init__(self, target: BigQueryTarget, run: RecomputeRun):
        self._target = target
        self._run = run

    def process(self, rows_written, summary):
        client = self._target.client()
        summary = {**summary, "rows_staged": rows_written}
        revision = commit_run(client, self._target, self._run, summary)
        yield {**summary, "run_id": self._run.run_id, "revision": revision}


class CommitAfterWrites(beam.PTransform):
    """(Written of the staging writes, summary) -> what the `commit` DoFn yields, run once
    after every staging write (it waits for their total); never when a row was given up.

    Runs inside the pipeline, after the writes it depends on, so a Flex
    Template launch needs no driver waiting for the job to finish.
    """

    def __init__(self, commit: beam.DoFn):
        super().__init__()
        self._commit = commit

    def expand(self, inputs):
        written, summary = inputs
        return (written
                | "Total" >> beam.CombineGlobally(total_written)
                | "Complete" >> beam.Map(rows_if_complete)
                | "Commit" >> beam.ParDo(self._commit, beam.pvalue.AsSingleton(summary)))


class IncompleteWrite(RuntimeError):
    """Some rows of a run could not be staged: committing would restate the period without
    them, so the run stops, uncommitted; `failed_writes` holds the rows and reasons."""


def rows_if_complete(written: Written) -> int:
    """The rows staged, or IncompleteWrite if any row was given up."""
    if written.failed:
        raise IncompleteWrite(
            f"{written.failed} rows could not be written (recorded in failed_writes), so "
            f"the run is not committed: " + " | ".join(r[:300] for r in written.reasons))
    return written.rows


class CommitRun(CommitAfterWrites):
    """Commits a recompute run: its staged rows and its `recompute_runs` row, atomically."""

    def __init__(self, target: BigQueryTarget, run: RecomputeRun):
        super().__init__(_Commit(target, run))
