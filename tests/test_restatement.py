"""Restating a period without the emulator: the staging rows a run writes, the payloads
read back from `events`, the commit's parameters, and `commit_run`'s serialising of
concurrent commits against a fake BigQuery that keeps `recompute_runs`, the committed
rows and the staging tables as BigQuery would (the local-stack version of these is
tests/e2e/test_restate.py)."""
import datetime as dt
import json
import re

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from google.api_core.exceptions import NotFound

from schemas.events import Payload
from schemas.tables import USAGE_RECOMPUTED
from transforms import restate
from transforms.bigquery import BigQueryTarget, Written
from transforms.restate import (ConcurrentCommit, CommitRun, RecomputeRun, commit_run,
                                event_payloads)

NS, HOUR = 10 ** 9, 3600 * 10 ** 9
TARGET = BigQueryTarget("proj-1", "ds")
START = 1_793_491_200 * NS  # 2026-11-01T00:00:00Z
USAGE = {"subject": "acme", "meter": "calls", "dimensions": '{"region":"eu"}',
         "window_start": "2026-11-01T00:00:00Z", "window_end": "2026-11-01T01:00:00Z",
         "value": "12.5", "event_count": 3, "fingerprint": "0" * 31 + "7"}


def run_of(run_id: str, started_ns: int = START + 5 * HOUR + 123_456_789) -> RecomputeRun:
    return RecomputeRun(run_id, START, START + 24 * HOUR, HOUR, "close", started_ns)


def test_a_usage_row_becomes_a_staging_row_of_its_run():
    run = run_of("recompute-1")
    key, row = run.row(USAGE, bignumeric=False)
    assert key == 'recompute-1:acme:calls:{"region":"eu"}:2026-11-01T00:00:00Z'
    assert row == {**USAGE, "value": "12.5", "value_bignumeric": None, "revision": 0,
                   "run_id": "recompute-1",
                   "recomputed_at": "2026-11-01T05:00:00.123456Z",  # to the microsecond
                   "reason": "close", "period_start": "2026-11-01T00:00:00Z",
                   "period_end": "2026-11-02T00:00:00Z"}
    _, big = run.row(USAGE, bignumeric=True)
    assert (big["value"], big["value_bignumeric"]) == (None, "12.5")
    assert run.staging_table.name == "usage_recomputed__staging_recompute_1"


def test_events_rows_become_payloads_whose_order_is_ingest_time_then_message_id():
    us = [START // 1000 + 2_000_000, START // 1000 + 1_000_000]
    batch = pa.record_batch({
        "raw": ['{"id":"a"}', '{"id":"\u00e9"}'],
        "message_id": ["m-1", None],
        "ingest_time": pa.array(us, pa.timestamp("us", tz="UTC")),
    })
    assert event_payloads(batch) == [
        # stored events are structured: no Pub/Sub attributes to read (schemas.events.Payload)
        Payload("m-1", (us[0], "m-1"), b'{"id":"a"}', us[0] * 1000),
        Payload("", (us[1], ""), '{"id":"\u00e9"}'.encode(), us[1] * 1000),
    ]


def test_the_commit_parameters_name_the_run(monkeypatch):
    committed = START + 6 * HOUR + 999_999_999
    monkeypatch.setattr(restate.time, "time_ns", lambda: committed)
    params = {name: (kind, value) for name, kind, value in
              restate._commit_parameters(run_of("r-1"), {"b": 2, "a": 1})}
    assert params == {
        "period_start": ("TIMESTAMP", "2026-11-01T00:00:00Z"),
        "period_end": ("TIMESTAMP", "2026-11-02T00:00:00Z"),
        "run_id": ("STRING", "r-1"), "window_seconds": ("INT64", 3600),
        "reason": ("STRING", "close"),
        "started_at": ("TIMESTAMP", "2026-11-01T05:00:00.123456Z"),
        "committed_at": ("TIMESTAMP", "2026-11-01T06:00:00.999999Z"),
        "summary": ("STRING", '{"a": 1, "b": 2}'),
    }
    assert type(params["window_seconds"][1]) is int  # an INT64 parameter, not 3600.0


class FakeBigQuery:
    """`recompute_runs`, the committed usage rows and the staging tables of one dataset.

    Statements are told apart by their first words; parameters are the query's
    (TIMESTAMPs parsed by the client).
    `stale_reads` commits compute their next revision without the runs listed (both
    read the same snapshot, as concurrent BigQuery transactions do); `on_holders` is
    called before each answer to the same-revision query (a rival acting meanwhile).
    """

    def __init__(self):
        self.runs: list[dict] = []
        self.usage: list[dict] = []
        self.staging: dict[str, list[dict]] = {}
        self.stale_reads: set[str] = set()
        self.on_holders = lambda: None
        self.statements: list[tuple[str, dict]] = []
        self.schemas: list = []  # of the tables created

    def stage(self, run: RecomputeRun, rows: list[dict]) -> None:
        self.staging[TARGET.table_id(run.staging_table)] = rows

    def create_table(self, table):
        self.staging[f"{table.project}.{table.dataset_id}.{table.table_id}"] = []
        self.schemas.append(table.schema)

    def get_table(self, table_id):
        if table_id not in self.staging:
            raise NotFound(table_id)

    def delete_table(self, table_id, not_found_ok=False):
        assert not_found_ok
        self.staging.pop(table_id, None)

    def query(self, sql, job_config):
        params = {p.name: p.value for p in job_config.query_parameters}
        statement = " ".join(sql.split()[:4])
        self.statements.append((statement, params))
        run_id = params["run_id"]
        mine = [r for r in self.runs if r["run_id"] == run_id]
        if statement.startswith("SELECT revision, summary FROM"):
            return Result([{"revision": r["revision"], "summary": r.get("summary")}
                           for r in mine])
        if statement.startswith("SELECT o.run_id FROM"):
            self.on_holders()
            mine = [r for r in self.runs if r["run_id"] == run_id]
            return Result([{"run_id": r["run_id"]} for r in self.runs if mine and
                           (r["revision"], r["period_start"], r["period_end"]) ==
                           (mine[0]["revision"], mine[0]["period_start"], mine[0]["period_end"])])
        if statement == "BEGIN TRANSACTION; INSERT INTO":
            if not mine:
                seen = [r["revision"] for r in self.runs if r["run_id"] not in self.stale_reads
                        and (r["period_start"], r["period_end"]) ==
                        (params["period_start"], params["period_end"])]
                revision = max(seen, default=0) + 1
                staged = self.staging[re.search(r"FROM `([^`]+)` s\b", sql).group(1)]
                self.usage += [{**r, "revision": revision, "run_id": run_id} for r in staged]
                self.runs.append({**params, "revision": revision})
            return Result([])
        if statement == "BEGIN TRANSACTION; DELETE FROM":
            self.runs = [r for r in self.runs if r["run_id"] != run_id]
            self.usage = [r for r in self.usage if r["run_id"] != run_id]
            return Result([])
        raise AssertionError(f"unexpected statement: {sql}")

    def withdrawn(self) -> list[str]:
        return [p["run_id"] for s, p in self.statements if s == "BEGIN TRANSACTION; DELETE FROM"]


class Result(list):
    def result(self):
        return self


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(restate.random, "uniform", lambda low, high: 0)


def committed_run(fake: FakeBigQuery, run: RecomputeRun, revision: int) -> None:
    day = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)  # as the client parses it
    fake.runs.append({"run_id": run.run_id, "revision": revision, "period_start": day,
                      "period_end": day + dt.timedelta(days=1)})


def test_a_run_alone_commits_the_next_revision_once_and_drops_its_staging():
    fake = FakeBigQuery()
    committed_run(fake, run_of("older"), 1)
    run = run_of("r-new")
    fake.stage(run, [USAGE])
    assert commit_run(fake, TARGET, run, {"rows": 1}) == 2
    assert fake.staging == {}
    (row,) = [r for r in fake.runs if r["run_id"] == "r-new"]
    assert json.loads(row["summary"]) == {"rows": 1} and row["window_seconds"] == 3600
    assert fake.usage == [{**USAGE, "revision": 2, "run_id": "r-new"}]
    assert commit_run(fake, TARGET, run, {"rows": 1}) == 2  # a retried commit changes nothing
    assert len(fake.usage) == 1 and len(fake.runs) == 2 and fake.withdrawn() == []


def test_a_run_sharing_its_revision_with_a_final_run_takes_itself_back_and_commits_next():
    fake = FakeBigQuery()
    final, run = run_of("r-a"), run_of("r-b")
    committed_run(fake, final, 1)
    fake.stale_reads = {"r-a"}  # r-b's first commit did not see r-a's
    fake.stage(run, [USAGE])

    def rival_seen():  # from r-b's second commit on, r-a is visible
        fake.stale_reads = set()
    fake.on_holders = rival_seen
    assert commit_run(fake, TARGET, run, {}) == 2
    assert fake.withdrawn() == ["r-b"]
    assert sorted((r["run_id"], r["revision"]) for r in fake.runs) == [("r-a", 1), ("r-b", 2)]
    assert [r["revision"] for r in fake.usage] == [2]


def test_a_final_run_keeps_its_revision_while_a_rival_takes_itself_back():
    fake = FakeBigQuery()
    final, rival = run_of("r-b"), run_of("r-a")
    committed_run(fake, final, 1)
    committed_run(fake, rival, 1)
    fake.stage(rival, [USAGE])  # the rival is not final yet; r-b's staging is dropped
    assert commit_run(fake, TARGET, final, {}) == 1
    assert fake.withdrawn() == [] and TARGET.table_id(rival.staging_table) in fake.staging


def test_the_first_holder_by_run_id_waits_for_the_others_to_take_themselves_back():
    fake = FakeBigQuery()
    first, second = run_of("r-a"), run_of("r-b")
    committed_run(fake, first, 1)
    committed_run(fake, second, 1)
    fake.stage(first, [USAGE])
    fake.stage(second, [USAGE])
    asked = []

    def second_withdraws_on_the_second_look():
        asked.append(1)
        if len(asked) == 2:
            fake.runs = [r for r in fake.runs if r["run_id"] != "r-b"]
    fake.on_holders = second_withdraws_on_the_second_look
    assert commit_run(fake, TARGET, first, {}) == 1
    assert len(asked) == 2 and fake.withdrawn() == []  # it never takes back another run
    assert TARGET.table_id(first.staging_table) not in fake.staging


def test_a_run_that_keeps_sharing_its_revision_gives_up_taken_back():
    fake = FakeBigQuery()
    first, run = run_of("r-a"), run_of("r-b")
    committed_run(fake, first, 1)
    fake.stage(first, [USAGE])  # r-a never becomes final, and r-b never sees it
    fake.stale_reads = {"r-a"}
    fake.stage(run, [USAGE])
    with pytest.raises(ConcurrentCommit, match=r"run r-b: .*\(40 attempts\); run again"):
        commit_run(fake, TARGET, run, {})
    assert fake.withdrawn() == ["r-b"] * (restate.COMMIT_ATTEMPTS + 1)
    assert [r["run_id"] for r in fake.runs] == ["r-a"] and fake.usage == []


def test_a_run_is_staged_in_a_table_of_its_own_shaped_as_usage_recomputed():
    fake = FakeBigQuery()
    restate.create_staging(fake, TARGET, run_of("r-1"))
    assert list(fake.staging) == ["proj-1.ds.usage_recomputed__staging_r_1"]
    assert [f.name for f in fake.schemas[0]] == USAGE_RECOMPUTED.column_names()


def test_the_pause_before_commit_is_read_from_the_environment(monkeypatch):
    """The crash test's fault injection (tests/e2e/test_restate.py): seconds to sleep."""
    slept = []
    monkeypatch.setattr(restate.time, "sleep", slept.append)
    for setting, pauses in (("0.25", [0.25]), ("", []), (None, [])):
        if setting is None:
            monkeypatch.delenv(restate.PAUSE_BEFORE_COMMIT_ENV, raising=False)
        else:
            monkeypatch.setenv(restate.PAUSE_BEFORE_COMMIT_ENV, setting)
        fake, run = FakeBigQuery(), run_of("r-1")
        fake.stage(run, [USAGE])
        slept.clear()
        assert commit_run(fake, TARGET, run, {}) == 1 and slept == pauses


def test_a_commit_that_does_not_land_is_an_error():
    class Lost(FakeBigQuery):
        def query(self, sql, job_config):
            return Result([]) if "INSERT" in sql else super().query(sql, job_config)

    fake = Lost()
    run = run_of("r-1")
    fake.stage(run, [USAGE])
    with pytest.raises(RuntimeError, match="the commit of run r-1 did not land"):
        commit_run(fake, TARGET, run, {})


class FakeTarget(BigQueryTarget):
    def client(self):
        return PIPELINE_FAKE


PIPELINE_FAKE = FakeBigQuery()  # the commit DoFn runs in this process (DirectRunner)


@pytest.fixture
def pipeline_fake():
    """PIPELINE_FAKE emptied: nothing an earlier test (or process it was forked from,
    as mutation testing does) committed is seen."""
    PIPELINE_FAKE.__init__()
    return PIPELINE_FAKE


def run_commit(written: list[Written], run: RecomputeRun):
    with TestPipeline() as p:
        summary = p | "Summary" >> beam.Create([{"lines": 9}])
        out = (p | "Written" >> beam.Create(written), summary) | CommitRun(
            FakeTarget("proj-1", "ds"), run)
        assert_that(out, equal_to([{"lines": 9, "rows_staged": 5, "run_id": run.run_id,
                                    "revision": 1}]))


def test_commit_run_commits_once_after_every_staging_write(pipeline_fake):
    run = run_of("rpipe1")
    pipeline_fake.stage(run, [USAGE])
    run_commit([Written(2), Written(3)], run)
    (row,) = pipeline_fake.runs
    assert json.loads(row["summary"]) == {"lines": 9, "rows_staged": 5}


def test_commit_run_commits_nothing_when_a_row_was_given_up(pipeline_fake):
    run = run_of("rpipe2")
    pipeline_fake.stage(run, [USAGE])
    with pytest.raises(Exception, match="1 rows could not be written.*too big"):
        run_commit([Written(2), Written(2, 1, ("too big",))], run)
    assert pipeline_fake.runs == [] and pipeline_fake.statements == []


def test_an_incomplete_write_names_how_many_rows_and_the_first_reasons_clipped():
    long = "x" * 301
    with pytest.raises(restate.IncompleteWrite) as caught:
        restate.rows_if_complete(Written(5, 2, (long, "too big")))
    assert str(caught.value) == ("2 rows could not be written (recorded in failed_writes), so "
                                 f"the run is not committed: {long[:300]} | too big")
