"""In-memory stand-ins for the BigQuery side of a commit (`restate.RecomputeLedger`,
`rating.RatingLedger`), for testing what the commit loops decide without BigQuery, and
a client that records what those ledgers send (`Recording`), also as the client of a
commit step in a test pipeline (`RecordingTarget`).

A `Period` holds what BigQuery would: the revision each run committed, the rows it
committed, and which runs still have staging tables. Its ledgers act on it as the
statements of schemas/sql.py do; the statements themselves run on the emulator
(tests/e2e/test_restate.py, tests/e2e/test_guards.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from google.api_core.exceptions import NotFound

from tests.test_storage_write import FakeWriteClient
from transforms.bigquery_target import BigQueryTarget


@dataclass
class Period:
    revisions: dict[str, int] = field(default_factory=dict)  # run id -> committed revision
    rows: dict[str, list] = field(default_factory=dict)  # run id -> its committed rows
    summaries: dict[str, dict] = field(default_factory=dict)
    staging: dict[str, list] = field(default_factory=dict)  # run id -> its staged rows
    # runs a commit does not see (they committed in the same snapshot, as concurrent
    # BigQuery transactions do)
    unseen: set[str] = field(default_factory=set)
    withdrawn: list[str] = field(default_factory=list)  # runs taken back, in order
    # called before each answer about the holders of a revision (a rival acting meanwhile)
    on_holders: object = lambda: None

    def committed(self, run_id: str, revision: int, staged: bool = False) -> None:
        """A run that committed `revision` (still staged: not final yet)."""
        self.revisions[run_id], self.rows[run_id] = revision, [run_id]
        if staged:
            self.staging[run_id] = [run_id]

    def latest_seen(self) -> int:
        return max((r for run, r in self.revisions.items() if run not in self.unseen),
                   default=0)

    def holders_of(self, revision: int) -> set[str]:
        self.on_holders()
        return {run for run, r in self.revisions.items() if r == revision}

    def gives_way(self, run_id: str, on_look: int) -> list:
        """`run_id` takes itself back just before the `on_look`-th answer about the holders
        of a revision; returns the looks, as they are counted."""
        looks = []

        def look():
            looks.append(1)
            if len(looks) == on_look:
                self.take_back(run_id)
        self.on_holders = look
        return looks

    def take_back(self, run_id: str) -> None:
        self.withdrawn.append(run_id)
        self.revisions.pop(run_id, None)
        self.rows.pop(run_id, None)


class _Ledger:
    def __init__(self, period: Period, run_id: str):
        self.period, self.run_id = period, run_id

    def staged(self, run_id: str) -> bool:
        return run_id in self.period.staging

    def withdraw(self) -> None:
        self.period.take_back(self.run_id)

    def drop_staging(self) -> None:
        self.period.staging.pop(self.run_id, None)


class RecomputeLedger(_Ledger):
    """A recompute's commit takes the next revision after those it sees; once."""

    def revision(self) -> int | None:
        return self.period.revisions.get(self.run_id)

    def commit(self, summary: dict) -> None:
        period = self.period
        if self.run_id not in period.revisions:
            period.revisions[self.run_id] = period.latest_seen() + 1
            period.rows[self.run_id] = list(period.staging[self.run_id])
            period.summaries[self.run_id] = summary

    def holders(self) -> set[str]:
        mine = self.period.revisions.get(self.run_id)
        return self.period.holders_of(mine) if mine is not None else set()


class RatingLedger(_Ledger):
    """A rating's commit inserts its revision only while the latest it sees is the one
    before it."""

    def __init__(self, period: Period, run_id: str, revision: int):
        super().__init__(period, run_id)
        self.revision = revision

    def commit(self) -> None:
        period = self.period
        if period.latest_seen() == self.revision - 1:
            period.revisions[self.run_id] = self.revision
            period.rows[self.run_id] = list(period.staging[self.run_id])

    def holders(self) -> set[str]:
        return self.period.holders_of(self.revision)

    def latest_revision(self) -> int:
        return max(self.period.revisions.values(), default=0)


class Recording:
    """A client: `answers` are the rows of the next queries, in order; `tables` exist."""

    def __init__(self, *answers, tables=()):
        self.answers, self.tables = list(answers), set(tables)
        self.sent: list[tuple[str, dict]] = []
        self.deleted: list[str] = []

    def query(self, sql, job_config):
        params = {p.name: (p.type_, p.value) for p in job_config.query_parameters}
        self.sent.append((sql, params))
        rows = self.answers.pop(0) if self.answers else []
        return Rows(rows)

    def get_table(self, table_id):
        if table_id not in self.tables:
            raise NotFound(table_id)

    def delete_table(self, table_id, not_found_ok=False):
        assert not_found_ok  # a retried drop must not fail
        self.deleted.append(table_id)


class Rows(list):
    def result(self):
        return self


# A commit step runs in the test's process (DirectRunner): its clients are these.
PIPELINE_CLIENT = Recording()
PIPELINE_WRITES = FakeWriteClient()


class RecordingTarget(BigQueryTarget):
    """A target whose BigQuery client is PIPELINE_CLIENT and Storage Write client
    PIPELINE_WRITES."""

    def client(self):
        return PIPELINE_CLIENT

    def write_client(self):
        return PIPELINE_WRITES
