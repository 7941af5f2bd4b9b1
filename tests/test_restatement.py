"""Restating a period without the emulator: the staging rows a run writes, the payloads
read back from `events`, the commit's parameters, and what `commit_through` decides
(a retried commit, a rival that is final, the first holder waiting, giving up) against
an in-memory ledger (tests/ledgers.py); the commit's statements themselves run on the
emulator (tests/e2e/test_restate.py)."""

import json
import random

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.events import DEFAULT_MAX_FUTURE_SKEW_NS, Limits, Payload, UsageEvent, parse_payload
from schemas.values import format_time, parse_rfc3339
from schemas.tables import USAGE_RECOMPUTED
from transforms import restate
from transforms.bigquery import Written
from transforms.bigquery_target import BigQueryTarget
from transforms.restate import ConcurrentCommit, RecomputeRun, commit_through, event_payloads
from transforms.rows import event_row
from tallyflow.reports import explain
from tests import ledgers
from tests.conftest import event
from tests.ledgers import Period, Recording

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
        # the last nanosecond of the stored microsecond (see the test below)
        Payload("m-1", (us[0], "m-1"), b'{"id":"a"}', us[0] * 1000 + 999),
        Payload("", (us[1], ""), '{"id":"\u00e9"}'.encode(), us[1] * 1000 + 999),
    ]


def test_an_event_accepted_at_the_future_skew_limit_is_accepted_again_from_events(catalog):
    """`events` keeps the ingest time to the microsecond; judged again against the start
    of that microsecond, an event stamped up to 999 ns less than max_future_skew after
    its ingest would be FUTURE_TIME now, and missing from the restated period."""
    ingest_ns = START + 5 * HOUR + 123_456_789
    time = format_time(ingest_ns + DEFAULT_MAX_FUTURE_SKEW_NS)
    raw = json.dumps(event(type="unmetered", time=time))
    accepted = parse_payload(raw.encode(), "m-1", ("m-1",), catalog, Limits(now_ns=None),
                             ingest_ns)
    assert isinstance(accepted[0], UsageEvent)  # as streaming judged it
    _, stored = event_row(accepted[0], "job-1")
    batch = pa.record_batch({
        "raw": [stored["raw"]], "message_id": [stored["message_id"]],
        "ingest_time": pa.array([parse_rfc3339(stored["ingest_time"]) // 1000],
                                pa.timestamp("us", tz="UTC")),
    })
    [payload] = event_payloads(batch)
    assert [type(result) for result in payload.parse(catalog, Limits(now_ns=None))] == \
        [UsageEvent]
    # explain re-reads the row, ingest time as BigQuery returns it, the same way
    row = {**stored, "ingest_time": batch.column("ingest_time").to_pylist()[0]}
    assert isinstance(explain._parse_stored(catalog, row), UsageEvent)


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


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(restate.random, "uniform", lambda low, high: 0)


def ledger_of(period: Period, run_id: str, staged=("row",)) -> ledgers.RecomputeLedger:
    period.staging[run_id] = list(staged)
    return ledgers.RecomputeLedger(period, run_id)


def test_a_run_alone_commits_the_next_revision_once_and_drops_its_staging():
    period = Period()
    period.committed("older", 1)
    ledger = ledger_of(period, "r-new", ["row-1", "row-2"])
    assert commit_through(ledger, "r-new", {"rows": 2}) == 2
    assert period.staging == {} and period.rows["r-new"] == ["row-1", "row-2"]
    assert period.summaries == {"r-new": {"rows": 2}}
    assert commit_through(ledger, "r-new", {"rows": 2}) == 2  # a retried commit changes nothing
    assert period.revisions == {"older": 1, "r-new": 2} and period.withdrawn == []


def test_a_run_sharing_its_revision_with_a_final_run_takes_itself_back_and_commits_next():
    period = Period()
    period.committed("r-a", 1)  # final: no staging table left
    period.unseen = {"r-a"}  # r-b's first commit did not see r-a's

    def rival_seen():  # from r-b's second commit on, r-a is visible
        period.unseen = set()
    period.on_holders = rival_seen
    assert commit_through(ledger_of(period, "r-b"), "r-b", {}) == 2
    assert period.withdrawn == ["r-b"]
    assert period.revisions == {"r-a": 1, "r-b": 2} and "r-b" not in period.staging


def test_the_first_holder_by_run_id_takes_itself_back_when_a_later_one_is_final():
    period = Period()
    period.committed("r-b", 1)
    period.unseen = {"r-b"}
    period.on_holders = lambda: period.unseen.clear()
    assert commit_through(ledger_of(period, "r-a"), "r-a", {}) == 2
    assert period.withdrawn == ["r-a"] and period.revisions == {"r-b": 1, "r-a": 2}


def test_a_final_run_keeps_its_revision_while_a_rival_takes_itself_back():
    period = Period()
    period.committed("r-b", 1)  # final: its staging table is gone
    period.committed("r-a", 1, staged=True)  # the rival is not final yet
    assert commit_through(ledgers.RecomputeLedger(period, "r-b"), "r-b", {}) == 1
    assert period.withdrawn == [] and "r-a" in period.staging


def test_the_first_holder_by_run_id_waits_for_the_others_to_take_themselves_back():
    period = Period()
    period.committed("r-a", 1, staged=True)
    period.committed("r-b", 1, staged=True)
    asked = period.gives_way("r-b", on_look=2)
    assert commit_through(ledgers.RecomputeLedger(period, "r-a"), "r-a", {}) == 1
    assert len(asked) == 2 and period.withdrawn == ["r-b"]  # r-b took itself back, r-a none
    assert "r-a" not in period.staging


def test_a_run_that_keeps_sharing_its_revision_gives_up_taken_back():
    period = Period()
    period.committed("r-a", 1, staged=True)  # r-a never becomes final, and r-b never sees it
    period.unseen = {"r-a"}
    with pytest.raises(ConcurrentCommit, match=r"run r-b: .*\(40 attempts\); run again"):
        commit_through(ledger_of(period, "r-b"), "r-b", {})
    assert period.withdrawn == ["r-b"] * (restate.COMMIT_ATTEMPTS + 1)
    assert period.revisions == {"r-a": 1} and "r-b" in period.staging


def test_a_run_waits_a_fifth_to_half_a_second_between_attempts(monkeypatch):
    """Jittered, so that rivals retrying together drift apart; bounded, so 40 attempts
    take at most 20 s."""
    waits = []
    monkeypatch.setattr(restate.random, "uniform", random.Random(7).uniform)
    monkeypatch.setattr(restate.time, "sleep", waits.append)
    period = Period()
    period.committed("r-a", 1, staged=True)
    period.unseen = {"r-a"}
    with pytest.raises(ConcurrentCommit):
        commit_through(ledger_of(period, "r-b"), "r-b", {})
    assert len(waits) == restate.COMMIT_ATTEMPTS and all(0.2 <= w <= 0.5 for w in waits)
    assert len(set(waits)) == len(waits)


def test_a_run_is_staged_in_a_table_of_its_own_shaped_as_usage_recomputed():
    created = []

    class Client:
        create_table = created.append

    restate.create_staging(Client(), TARGET, run_of("r-1"))
    (table,) = created
    assert f"{table.project}.{table.dataset_id}.{table.table_id}" == \
        "proj-1.ds.usage_recomputed__staging_r_1"
    assert [f.name for f in table.schema] == USAGE_RECOMPUTED.column_names()


def test_the_pause_before_commit_is_read_from_the_environment(monkeypatch):
    """The crash test's fault injection (tests/e2e/test_restate.py): seconds to sleep."""
    slept = []
    monkeypatch.setattr(restate.time, "sleep", slept.append)
    for setting, pauses in (("0.25", [0.25]), ("", []), (None, [])):
        if setting is None:
            monkeypatch.delenv(restate.PAUSE_BEFORE_COMMIT_ENV, raising=False)
        else:
            monkeypatch.setenv(restate.PAUSE_BEFORE_COMMIT_ENV, setting)
        slept.clear()
        assert commit_through(ledger_of(Period(), "r-1"), "r-1", {}) == 1 and slept == pauses


def test_a_commit_that_does_not_land_is_an_error():
    class Lost(ledgers.RecomputeLedger):
        def commit(self, summary):
            pass

    period = Period()
    period.staging["r-1"] = ["row"]
    with pytest.raises(RuntimeError, match="the commit of run r-1 did not land"):
        commit_through(Lost(period, "r-1"), "r-1", {})


PIPELINE_PERIOD = Period()  # the commit DoFn runs in this process (DirectRunner)


class _FakeCommit(restate._Commit):
    def ledger(self):
        return ledgers.RecomputeLedger(PIPELINE_PERIOD, self._run.run_id)




@pytest.fixture
def pipeline_period():
    """PIPELINE_PERIOD and the pipeline's clients emptied: nothing an earlier test (or process
    it was forked from, as mutation testing does) committed is seen."""
    PIPELINE_PERIOD.__init__()
    ledgers.PIPELINE_WRITES.__init__()
    ledgers.PIPELINE_CLIENT.__init__()
    return PIPELINE_PERIOD


def run_commit(written: list[Written], run: RecomputeRun, commit=_FakeCommit):
    target = ledgers.RecordingTarget("proj-1", "ds")
    with TestPipeline() as p:
        summary = p | "Summary" >> beam.Create([{"lines": 9}])
        out = (p | "Written" >> beam.Create(written), summary) | restate.CommitAfterWrites(
            commit(target, run), target)
        assert_that(out, equal_to([{"lines": 9, "rows_staged": 5, "run_id": run.run_id,
                                    "revision": 1}]))


STREAMS = ("projects/p/datasets/d/tables/t/streams/a", "projects/p/datasets/d/tables/t/streams/b")


def test_commit_run_commits_once_after_every_staging_write(pipeline_period):
    run = run_of("rpipe1")
    pipeline_period.staging[run.run_id] = ["row"]
    run_commit([Written(2, streams=STREAMS[:1]), Written(3, streams=STREAMS[1:])], run)
    assert pipeline_period.revisions == {"rpipe1": 1}
    assert pipeline_period.summaries == {"rpipe1": {"lines": 9, "rows_staged": 5}}
    assert set(ledgers.PIPELINE_WRITES.committed) == set(STREAMS)  # the staged rows made visible


def test_commit_run_commits_through_the_bigquery_ledger_of_its_target(pipeline_period):
    """CommitRun as the recompute builds it, on a client answering as BigQuery would for
    a run alone: not committed, committed as revision 1, the only holder."""
    run = run_of("rpipe3")
    ledgers.PIPELINE_CLIENT.__init__([], [], [{"revision": 1}], [{"run_id": run.run_id}])
    with TestPipeline() as p:
        summary = p | "Summary" >> beam.Create([{"lines": 9}])
        out = (p | "Written" >> beam.Create([Written(5, streams=STREAMS)]), summary) | \
            restate.CommitRun(ledgers.RecordingTarget("proj-1", "ds"), run)
        assert_that(out, equal_to([{"lines": 9, "rows_staged": 5, "run_id": run.run_id,
                                    "revision": 1}]))
    assert set(ledgers.PIPELINE_WRITES.committed) == set(STREAMS)
    assert ledgers.PIPELINE_CLIENT.deleted == ["proj-1.ds.usage_recomputed__staging_rpipe3"]


def test_commit_run_commits_nothing_when_a_row_was_given_up(pipeline_period):
    run = run_of("rpipe2")
    pipeline_period.staging[run.run_id] = ["row"]
    with pytest.raises(Exception, match="1 rows could not be written.*too big"):
        run_commit([Written(2), Written(2, 1, ("too big",))], run)
    assert pipeline_period.revisions == {} and pipeline_period.staging == {"rpipe2": ["row"]}


def test_an_incomplete_write_names_how_many_rows_and_the_first_reasons_clipped():
    long = "x" * 301
    with pytest.raises(restate.IncompleteWrite) as caught:
        restate.rows_if_complete(Written(5, 2, (long, "too big")))
    assert str(caught.value) == ("2 rows could not be written (recorded in failed_writes), so "
                                 f"the run is not committed: {long[:300]} | too big")


def test_commit_run_commits_the_run_through_its_targets_bigquery_ledger():
    """On a client answering as BigQuery would for a run alone: not committed, then
    revision 3, the only holder."""
    run = run_of("r-1")
    client = Recording([], [], [{"revision": 3}], [{"run_id": "r-1"}])
    assert restate.commit_run(client, TARGET, run, {"rows": 4}) == 3
    commits = [params for sql, params in client.sent if "summary" in params]
    assert [p["summary"] for p in commits] == [("STRING", '{"rows": 4}')]
    assert {p["run_id"] for _, p in client.sent} == {("STRING", "r-1")}
    assert client.deleted == ["proj-1.ds.usage_recomputed__staging_r_1"]


READS = []  # (target, table, columns, max streams) of each read ReadPeriodEvents asked for


class _EventsTable(beam.PTransform):
    """ReadTableStreams on an in-memory `events` table: the row restriction is evaluated
    by DuckDB, whose SQL reads BigQuery's `time >= TIMESTAMP '...'` alike."""

    def __init__(self, target, table, columns, row_restriction, max_streams):
        super().__init__()
        import duckdb

        READS.append((target, table.name, list(columns), max_streams))
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.execute("CREATE TABLE events (raw VARCHAR, message_id VARCHAR, "
                    "ingest_time TIMESTAMPTZ, time TIMESTAMPTZ)")
        con.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", EVENTS_ROWS)
        self._batch = con.sql(f"SELECT {', '.join(columns)} FROM events "
                              f"WHERE {row_restriction} ORDER BY raw").to_arrow_table()

    def expand(self, pbegin):
        return pbegin | beam.Create(self._batch.to_batches())


EVENTS_ROWS = [(raw, f"m-{raw}", "2026-11-05 00:00:00+00", time) for raw, time in (
    ("before", "2026-10-31 23:59:59.999999+00"), ("first", "2026-11-01 00:00:00+00"),
    ("last", "2026-11-01 23:59:59.999999+00"), ("end", "2026-11-02 00:00:00+00"))]


def test_a_period_is_read_from_its_first_instant_to_before_its_end(monkeypatch):
    monkeypatch.setattr(restate, "ReadTableStreams", _EventsTable)
    READS.clear()
    ingest = 1_793_836_800 * 10 ** 6  # 2026-11-05T00:00:00Z, in microseconds
    with TestPipeline() as p:
        payloads = (p | restate.ReadPeriodEvents(TARGET, START, START + 24 * HOUR, 3)
                    | beam.FlatMap(lambda batch: batch))
        assert_that(payloads, equal_to([
            Payload(f"m-{raw}", (ingest, f"m-{raw}"), raw.encode(), ingest * 1000 + 999)
            for raw in ("first", "last")]))
    assert READS == [(TARGET, "events", ["raw", "message_id", "ingest_time"], 3)]
