"""The BigQuery ledgers of the recompute's and the rating's commits, against a client
that records what is sent and answers with given rows: every statement binds every
parameter it names, with BigQuery's types and the run's values, names only tables
of the target's dataset, and the answers are read as the commit loops expect. Whether
the statements do the right thing is the emulator's part (tests/e2e/test_restate.py,
tests/e2e/test_guards.py); what the loops decide is tests/test_restatement.py's and
tests/test_rating.py's."""
import datetime as dt
import re

import pytest

from schemas.tables import INVOICE_LINES, INVOICES, USAGE_RECOMPUTED
from tests.ledgers import Recording
from transforms import rating, restate
from transforms.bigquery_target import BigQueryTarget

NS, HOUR = 10 ** 9, 3600 * 10 ** 9
START = 1_793_491_200 * NS  # 2026-11-01T00:00:00Z
TARGET = BigQueryTarget("proj-1", "ds")
RECOMPUTE = restate.RecomputeRun("r-1", START, START + 24 * HOUR, HOUR, "close",
                                 START + 5 * HOUR)
RATING = rating.RatingRun("rate-1", START, START + 24 * HOUR, 3, START + 25 * HOUR, "close")
TYPES = {"STRING", "INT64", "TIMESTAMP"}


def statement(client) -> tuple[str, dict]:
    """The one statement sent, checked: every parameter it names bound, BigQuery types,
    naming tables of the target's dataset only, every placeholder filled."""
    (sql, params), = client.sent
    assert set(re.findall(r"@(\w+)", sql)) <= set(params)  # every one it names is bound
    assert {kind for kind, _ in params.values()} <= TYPES
    assert "{" not in sql and "}" not in sql
    assert {name.rsplit(".", 1)[0] for name in re.findall(r"`([^`]+)`", sql)} == {"proj-1.ds"}
    client.sent.clear()
    return sql, params


def test_the_recompute_ledger_reads_the_runs_revision_and_holders():
    client = Recording([{"revision": 4, "summary": "{}"}], [],
                       [{"run_id": "r-1"}, {"run_id": "r-0"}])
    ledger = restate.RecomputeLedger(client, TARGET, RECOMPUTE)
    assert ledger.revision() == 4
    assert statement(client)[1] == {"run_id": ("STRING", "r-1")}
    assert ledger.revision() is None  # not committed yet
    statement(client)
    assert ledger.holders() == {"r-1", "r-0"}
    assert statement(client)[1] == {"run_id": ("STRING", "r-1")}
    ledger.withdraw()
    assert statement(client)[1] == {"run_id": ("STRING", "r-1")}


def test_the_recompute_commit_copies_every_column_from_the_runs_staging_table():
    client = Recording()
    restate.RecomputeLedger(client, TARGET, RECOMPUTE).commit({"rows": 1})
    sql, params = statement(client)
    assert params["run_id"] == ("STRING", "r-1") and params["summary"] == ("STRING",
                                                                           '{"rows": 1}')
    assert TARGET.table(RECOMPUTE.staging_table) in sql
    insert = re.search(r"INSERT INTO \S+ \(([^)]*)\)\s*SELECT (.*?)\s*FROM", sql, re.S)
    columns = USAGE_RECOMPUTED.column_names()
    assert insert.group(1).split(", ") == columns
    copied = dict(zip(columns, insert.group(2).split(", "), strict=True))
    # the staged values, except what the commit decides: the revision (the period's next,
    # not the staged 0), the commit time and the run
    assert {c for c in columns if copied[c] != f"s.{c}"} == {"revision", "recomputed_at",
                                                           "run_id"}
    assert (copied["recomputed_at"], copied["run_id"]) == ("@committed_at", "@run_id")
    assert copied["revision"].startswith("n.")


def test_a_ledger_tells_staged_runs_by_their_staging_table_and_drops_only_its_own():
    recompute = restate.RecomputeLedger(
        Recording(tables={TARGET.table_id(restate.staging_table_of("r-2"))}), TARGET, RECOMPUTE)
    assert (recompute.staged("r-2"), recompute.staged("r-1")) == (True, False)
    recompute.drop_staging()
    assert recompute._client.deleted == [TARGET.table_id(RECOMPUTE.staging_table)]
    rated = rating.RatingLedger(
        Recording(tables={TARGET.table_id(RATING.staging(INVOICES, "rate-2"))}), TARGET, RATING)
    assert (rated.staged("rate-2"), rated.staged("rate-1")) == (True, False)
    rated.drop_staging()
    assert rated._client.deleted == [TARGET.table_id(RATING.staging(t))
                                     for t in (INVOICE_LINES, INVOICES)]


RATING_PARAMS = {"period_start": ("TIMESTAMP", dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)),
                 "period_end": ("TIMESTAMP", dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)),
                 "run_id": ("STRING", "rate-1"), "revision": ("INT64", 3),
                 "previous_revision": ("INT64", 2)}


def test_the_rating_ledger_binds_the_run_and_reads_holders_and_the_latest_revision():
    client = Recording([{"run_id": "rate-1"}, {"run_id": "rate-0"}], [{"revision": 7}])
    ledger = rating.RatingLedger(client, TARGET, RATING)
    assert ledger.holders() == {"rate-1", "rate-0"}
    sql, params = statement(client)
    assert params == RATING_PARAMS
    assert ledger.latest_revision() == 7
    assert statement(client)[1] == {k: RATING_PARAMS[k] for k in ("period_start", "period_end")}
    ledger.withdraw()
    assert statement(client)[1] == RATING_PARAMS


def test_the_rating_commit_copies_every_column_of_lines_and_invoices_from_staging():
    client = Recording()
    rating.RatingLedger(client, TARGET, RATING).commit()
    sql, params = statement(client)
    assert params == RATING_PARAMS
    inserts = re.findall(r"INSERT INTO (\S+) \(([^)]*)\)\s*SELECT (.*?) FROM (\S+) s", sql, re.S)
    assert [(into, columns.split(", "), copied.split(", "), staging)  # as they were staged
            for into, columns, copied, staging in inserts] == [
        (TARGET.table(t), t.column_names(), [f"s.{c}" for c in t.column_names()],
         TARGET.table(RATING.staging(t))) for t in (INVOICE_LINES, INVOICES)]


@pytest.mark.parametrize("ledger", [restate.RecomputeLedger, rating.RatingLedger])
def test_a_ledger_sends_nothing_until_asked(ledger):
    client = Recording()
    ledger(client, TARGET, RECOMPUTE if ledger is restate.RecomputeLedger else RATING)
    assert client.sent == [] and client.deleted == []


def test_a_rating_is_staged_in_tables_of_its_own_shaped_as_lines_and_invoices():
    created = []

    class Client:
        create_table = created.append

    rating.create_staging(Client(), TARGET, RATING)
    assert [(f"{t.project}.{t.dataset_id}.{t.table_id}", [f.name for f in t.schema])
            for t in created] == [
        ("proj-1.ds.invoice_lines__staging_rate_1", INVOICE_LINES.column_names()),
        ("proj-1.ds.invoices__staging_rate_1", INVOICES.column_names())]
