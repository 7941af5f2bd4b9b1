"""Restating a closed period in BigQuery: read its events, stage, commit atomically.

A recompute run writes its rows to a staging table of its own (pending Storage
Write streams, `transforms/storage_write.py`, committed by the commit step once
every row is written), then one transaction appends them to `usage_recomputed` together with the run's row in
`recompute_runs`. The `usage` view only shows rows of runs in
`recompute_runs`, so a run is invisible until that commit and whole after it;
a run that dies before it leaves only a staging table behind. History is
append-only: every revision stays queryable.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass

import apache_beam as beam

from schemas import sql
from schemas.events import Payload, stored_ingest_ns
from schemas.tables import EVENTS, USAGE_RECOMPUTED, Table
from schemas.values import NS, format_time
from transforms.bigquery import Written, total_written
from transforms.bigquery_target import (BigQueryTarget, exists, period_parameters, query,
                                        timestamp)
from transforms.rows import checked_usage, usage_value_columns
from transforms.storage_read import ReadTableStreams
from transforms.storage_write import commit_streams

# Fault injection for the crash test: seconds to sleep between staging and commit.
PAUSE_BEFORE_COMMIT_ENV = "TALLYFLOW_PAUSE_BEFORE_COMMIT"


def staging_table_of(run_id: str) -> Table:
    return USAGE_RECOMPUTED.renamed(f"usage_recomputed__staging_{run_id.replace('-', '_')}")


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
        return staging_table_of(self.run_id)

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
    """The accepted events of [start, end) from `events`, as batches of payloads for
    ParseEvents, read in parallel over the Storage Read API (`ReadTableStreams`).

    The row restriction on event time prunes the day partitions outside the
    period. The earliest ingested copy of an identity sorts first, so
    deduplication keeps what streaming kept.
    """

    def __init__(self, target: BigQueryTarget, start_ns: int, end_ns: int,
                 max_streams: int = 0):
        super().__init__()
        self._target = target
        self._start, self._end = start_ns, end_ns
        self._max_streams = max_streams

    def expand(self, pbegin):
        period = (f"time >= TIMESTAMP '{format_time(self._start)}' "
                  f"AND time < TIMESTAMP '{format_time(self._end)}'")
        return (pbegin
                | "ReadStreams" >> ReadTableStreams(self._target, EVENTS, list(EVENT_COLUMNS),
                                                    period, self._max_streams)
                | "AsPayloads" >> beam.Map(event_payloads))


EVENT_COLUMNS = ("raw", "message_id", "ingest_time")


def event_payloads(batch) -> list[Payload]:
    """An Arrow batch of `events` rows -> payloads ordered by (ingest time, message id),
    each judged at its `stored_ingest_ns`."""
    import pyarrow as pa

    ingest_us = batch.column("ingest_time").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return [Payload(message_id or "", (us, message_id or ""), raw.encode("utf-8"),
                    stored_ingest_ns(us))
            for raw, message_id, us in zip(batch.column("raw").to_pylist(),
                                           batch.column("message_id").to_pylist(),
                                           ingest_us.to_pylist())]


def create_staging(client, target: BigQueryTarget, run: RecomputeRun) -> None:
    client.create_table(run.staging_table.bigquery_table(target.project, target.dataset))


COMMIT_ATTEMPTS = 40
# Columns of `usage_recomputed` the commit sets rather than copies from staging.
_COMMITTED = {"revision": "n.revision", "recomputed_at": "@committed_at", "run_id": "@run_id"}


class ConcurrentCommit(RuntimeError):
    """Concurrent recomputes of the period kept taking the same revision."""


def commit_run(client, target: BigQueryTarget, run: RecomputeRun, summary: dict) -> int:
    """Appends the staged rows and the run's row in one transaction; returns the revision
    (`commit_through` on BigQuery)."""
    return commit_through(RecomputeLedger(client, target, run), run.run_id, summary)


class RecomputeLedger:
    """A recompute run's side of BigQuery, one method per statement of its commit
    (schemas/sql.py): `commit_through` decides, this only sends, so the decisions are
    tested against a ledger of the test's own and these statements on the emulator."""

    def __init__(self, client, target: BigQueryTarget, run: RecomputeRun):
        self._client, self._target, self._run = client, target, run
        self._mine = [("run_id", "STRING", run.run_id)]

    def revision(self) -> int | None:
        """The run's committed revision; None before its commit."""
        found = query(self._client, self._target.sql(sql.COMMITTED_RUN), self._mine)
        return found[0]["revision"] if found else None

    def commit(self, summary: dict) -> None:
        """The commit transaction: a no-op when the run committed already."""
        query(self._client, self._target.sql(
            sql.COMMIT_RECOMPUTE, staging=self._run.staging_table,
            columns=", ".join(USAGE_RECOMPUTED.column_names()),
            copied=", ".join(_COMMITTED.get(c, f"s.{c}")
                             for c in USAGE_RECOMPUTED.column_names())),
              _commit_parameters(self._run, summary))

    def holders(self) -> set[str]:
        """The runs of the period holding the run's revision, itself included."""
        return {r["run_id"] for r in query(self._client, self._target.sql(
            sql.SAME_REVISION_RUNS), self._mine)}

    def staged(self, run_id: str) -> bool:
        """Whether that run still has its staging table (is not final yet)."""
        return exists(self._client, self._target, staging_table_of(run_id))

    def withdraw(self) -> None:
        """Takes the run's rows and its `recompute_runs` row back, in one transaction."""
        query(self._client, self._target.sql(sql.WITHDRAW_RECOMPUTE), self._mine)

    def drop_staging(self) -> None:
        self._client.delete_table(self._target.table_id(self._run.staging_table),
                                  not_found_ok=True)


def commit_through(ledger: RecomputeLedger, run_id: str, summary: dict) -> int:
    """Commits run `run_id` through `ledger`; returns its revision.

    Idempotent: committing a run again (a retried commit) changes nothing and returns
    its revision. Concurrent commits of one period are serialised: neither BigQuery
    (appends do not conflict) nor the emulator stops two transactions from taking the
    same revision, so each run checks after its commit. A run seen alone with its
    revision is final, and drops its staging table. A run that shares its revision
    takes itself back (one transaction) and commits again, unless it is the first
    of the holders by run id and none of them is final: that one waits for the
    others to take themselves back. A run never takes back another run.
    """
    pause = float(os.environ.get(PAUSE_BEFORE_COMMIT_ENV, "0") or 0)  # float-ok: seconds
    if pause:
        time.sleep(pause)
    for _ in range(COMMIT_ATTEMPTS):
        revision = ledger.revision()
        if revision is None:
            ledger.commit(summary)
            revision = ledger.revision()
            if revision is None:
                raise RuntimeError(f"the commit of run {run_id} did not land")
        step = settle(run_id, ledger.holders(), ledger.staged)
        if step == FINAL:
            ledger.drop_staging()
            return revision
        if step == WITHDRAW:
            ledger.withdraw()
        time.sleep(random.uniform(0.2, 0.5))
    ledger.withdraw()
    raise ConcurrentCommit(f"run {run_id}: concurrent recomputes of the period kept "
                           f"taking the same revision ({COMMIT_ATTEMPTS} attempts); run again")


FINAL, WAIT, WITHDRAW = "final", "wait", "withdraw"


def settle(me: str, holders: set[str], staged) -> str:
    """What a run that committed a revision does once it sees every run of the period
    holding that revision (`holders`, itself included); `staged(run_id)`: whether that run
    still has its staging table, i.e. is not final yet. Alone, or final already (a rival
    takes itself back): FINAL. The first holder by run id WAITs while no rival is final;
    any other run takes itself back (WITHDRAW). A run never takes back another run."""
    rivals = holders - {me}
    if not rivals or not staged(me):
        return FINAL
    if min(holders) == me and all(staged(r) for r in rivals):
        return WAIT
    return WITHDRAW


def _commit_parameters(run: RecomputeRun, summary: dict) -> list:
    committed_at = time.time_ns()
    return period_parameters(run.period_start_ns, run.period_end_ns) + [
        ("run_id", "STRING", run.run_id),
        ("window_seconds", "INT64", run.window_ns // NS),
        ("reason", "STRING", run.reason),
        timestamp("started_at", run.started_ns),
        timestamp("committed_at", committed_at),
        ("summary", "STRING", json.dumps(summary, sort_keys=True)),
    ]


class _Commit(beam.DoFn):
    def __init__(self, target: BigQueryTarget, run: RecomputeRun):
        self._target = target
        self._run = run

    def ledger(self) -> RecomputeLedger:
        return RecomputeLedger(self._target.client(), self._target, self._run)

    def process(self, rows_written, summary):
        summary = {**summary, "rows_staged": rows_written}
        revision = commit_through(self.ledger(), self._run.run_id, summary)
        yield {**summary, "run_id": self._run.run_id, "revision": revision}


class CommitAfterWrites(beam.PTransform):
    """(Written of the staging writes, summary) -> what the `commit` DoFn yields, run once
    after every staging write (it waits for their total); never when a row was given up.

    Runs inside the pipeline, after the writes it depends on, so a Flex
    Template launch needs no driver waiting for the job to finish.
    """

    def __init__(self, commit: beam.DoFn, target: BigQueryTarget):
        super().__init__()
        self._commit = commit
        self._target = target

    def expand(self, inputs):
        written, summary = inputs
        return (written
                | "Total" >> beam.CombineGlobally(total_written)
                | "CommitStreams" >> beam.Map(commit_pending_streams, self._target)
                | "Complete" >> beam.Map(rows_if_complete)
                | "Commit" >> beam.ParDo(self._commit, beam.pvalue.AsSingleton(summary)))


class IncompleteWrite(RuntimeError):
    """Some rows of a run could not be staged: committing would restate the period without
    them, so the run stops, uncommitted; `failed_writes` holds the rows and reasons."""


def commit_pending_streams(written: Written, target: BigQueryTarget) -> Written:
    """Makes the staged rows of pending streams (PENDING_METHOD) visible, if every row
    was staged; before the commit transaction, which reads them."""
    if written.streams and not written.failed:
        commit_streams(target.write_client(), written.streams)
    return written


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
        super().__init__(_Commit(target, run), target)
