"""The rating without BigQuery: a customer's charge lines, adjustments and invoices as
`_RateSubject` yields them, the `rate --diff` record, the run's summed counts and
summary, and what the commit decides (`commit_rating_through`: the stale-revision guard,
two ratings holding one revision, a rating with nothing to bill) against an in-memory
ledger (tests/ledgers.py; the statements on the emulator: tests/e2e/test_guards.py).
Amounts worked out by hand."""
import json
import random
from dataclasses import replace
from decimal import Decimal as D

import apache_beam as beam
import pytest
from apache_beam import pvalue
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.pricing import Line, parse_price_book
from schemas.values import parse_rfc3339
from transforms import rating
from tests import ledgers
from tests.ledgers import Period
from transforms.bigquery import Written
from transforms.bigquery_target import BigQueryTarget
from transforms.rating import RatingRun

NS, HOUR = 10 ** 9, 3600 * 10 ** 9
NOV = parse_rfc3339("2026-11-01T00:00:00Z")
DEC = parse_rfc3339("2026-12-01T00:00:00Z")
BOOK = parse_price_book({
    "plans": [{"id": "p", "currency": "EUR", "versions": [{
        "version": 1, "starting_at": "2026-01-01T00:00:00Z",
        "prices": [{"id": "calls", "meter": "calls", "model": "per_unit",
                    "unit_amount": "0.125"}]}]}],
    "assignments": [{"subject": "acme", "plan": "p", "starting_at": "2026-01-01T00:00:00Z"}]})
TARGET = BigQueryTarget("proj-1", "ds")
COMMON = {"period_start": "2026-11-01T00:00:00Z", "period_end": "2026-12-01T00:00:00Z",
          "rated_at": "2026-12-02T00:00:00.000001Z"}


def run_of(revision: int) -> RatingRun:
    return RatingRun("rate-1", NOV, DEC, revision, DEC + HOUR * 24 + 1500, "close")


def usage_row(hour: int, value: str, events: int, meter="calls") -> dict:
    return {"subject": "acme", "meter": meter, "dimensions": "{}",
            "start_us": (NOV + hour * HOUR) // 1000, "value": value, "value_bignumeric": None,
            "event_count": events}


def previous_line(amount: str, quantity: str) -> dict:
    return {"subject": "acme", "plan": "p", "plan_version": 1, "price_id": "calls",
            "meter": "calls", "dimensions": "{}", "model": "per_unit", "kind": "usage",
            "quantity": quantity, "event_count": 2, "unrounded_amount": amount,
            "amount": amount, "currency": "EUR"}


def rate(revision: int, usage: list, previous: list) -> dict:
    out: dict[str, list] = {}
    dofn = rating._RateSubject(BOOK, run_of(revision))
    for output in dofn.process(("acme", {"usage": [rating.usage_window(r)[1] for r in usage],
                                         "previous": previous})):
        assert isinstance(output, pvalue.TaggedOutput)
        out.setdefault(output.tag, []).append(output.value)
    return out


def test_a_first_rating_yields_charge_lines_and_an_invoice_without_adjustments():
    out = rate(1, [usage_row(0, "3", 1), usage_row(1, None, 4) | {"value_bignumeric": "4"},
                   usage_row(2, "5", 1, meter="other")], [])
    (line_id, line), = out["lines"]
    assert line == {"subject": "acme", "plan": "p", "plan_version": 1, "price_id": "calls",
                    "meter": "calls", "dimensions": "{}", "model": "per_unit", "kind": "usage",
                    "line_type": "charge", "quantity": "7", "event_count": 5,
                    "unrounded_amount": "0.875", "amount": "0.88", "previous_amount": None,
                    "currency": "EUR", "revision": 1, "run_id": "rate-1", **COMMON}
    (_, invoice), = out["invoices"]
    assert invoice == {"subject": "acme", "currency": "EUR", "total": "0.88",
                       "previous_total": None, "adjustment": None, "line_count": 1,
                       "reason": "close", "revision": 1, "run_id": "rate-1", **COMMON}
    assert "diff" not in out
    assert out["counts"] == [{"subjects": 1, "usage_rows": 3, "lines": 1, "adjustment_lines": 0,
                              "invoices": 1, "unpriced/meter_not_priced": 1,
                              "total/EUR": D("0.88")}]
    assert line_id == rate(1, [usage_row(0, "7", 5)], [])["lines"][0][0]  # by the line's key


def test_a_rerating_credits_and_debits_against_the_previous_revision():
    out = rate(2, [usage_row(0, "10", 3)], [previous_line("0.50", "4")])
    lines = {row["line_type"]: row for _, row in out["lines"]}
    assert len({row_id for row_id, _ in out["lines"]}) == 2  # the charge and its debit
    assert lines["charge"]["amount"] == "1.25"  # 10 x 0.125
    assert {k: lines["debit"][k] for k in ("quantity", "event_count", "unrounded_amount",
                                           "amount", "previous_amount")} == \
        {"quantity": "6", "event_count": 1, "unrounded_amount": "0.75", "amount": "0.75",
         "previous_amount": "0.5"}  # decimal text has no trailing fraction zeros
    (record,), = [out["diff"]]
    assert json.loads(record) == {
        "subject": "acme", "plan": "p", "plan_version": 1, "price_id": "calls",
        "dimensions": {}, "kind": "usage", "currency": "EUR", "line_type": "debit",
        "old_amount": "0.5", "new_amount": "1.25", "difference": "0.75"}
    (_, invoice), = out["invoices"]
    assert (invoice["total"], invoice["previous_total"], invoice["adjustment"]) == \
        ("1.25", "0.5", "0.75")
    assert out["counts"][0]["adjustment/EUR"] == D("0.75")
    assert out["counts"][0]["adjustment_lines"] == 1


def test_a_customer_no_longer_billed_in_a_currency_gets_an_invoice_of_zero():
    previous = [previous_line("2.00", "16") | {"currency": "USD"}]
    out = rate(2, [usage_row(0, "8", 1)], previous)
    invoices = {row["currency"]: row for _, row in out["invoices"]}
    assert (invoices["USD"]["total"], invoices["USD"]["previous_total"],
            invoices["USD"]["adjustment"], invoices["USD"]["line_count"]) == ("0", "2", "-2", 0)
    assert (invoices["EUR"]["total"], invoices["EUR"]["adjustment"]) == ("1", "1")
    credit, = [row for _, row in out["lines"] if row["line_type"] == "credit"]
    assert (credit["currency"], credit["amount"], credit["quantity"]) == ("USD", "-2", "-16")


def test_the_runs_counts_sum_money_exactly_and_print_it_as_text():
    combine = rating._SumCounts()
    parts = [{"subjects": 1, "total/EUR": D("0.10")}, {"subjects": 1, "total/EUR": D("0.20")},
             {"lines": 3}]
    halves = [combine.add_input(combine.create_accumulator(), p) for p in parts[:2]]
    merged = combine.merge_accumulators([*halves, combine.add_input({}, parts[2])])
    assert combine.extract_output(merged) == {"lines": 3, "subjects": 2, "total/EUR": "0.3"}


def test_the_summary_adds_up_every_customers_counts():
    with TestPipeline() as p:
        summary = (p | beam.Create([{"subjects": 1, "total/EUR": D("0.10")},
                                    {"subjects": 1, "total/EUR": D("0.25")}])
                   | rating.SummarizeRating(run_of(2), {"command": "rate"}))
        assert_that(summary, equal_to([{
            "command": "rate", "run_id": "rate-1", "revision": 2,
            "period_start": "2026-11-01T00:00:00Z", "period_end": "2026-12-01T00:00:00Z",
            "subjects": 2, "total/EUR": "0.35"}]))


def test_row_ids_are_distinct_per_run_customer_currency_and_line():
    """Insert ids: a rerating (another run) must not be deduplicated against the run
    before it, nor one customer's or currency's invoice against another's."""
    line = Line("acme", "p", 1, "calls", "calls", "{}", "per_unit", "usage", D(1), 1, D(1),
                D(1), "EUR")
    ids = {rating.line_row(line, run, kind)[0]
           for run in (run_of(1), RatingRun("rate-2", NOV, DEC, 1, 0))
           for kind in ("charge", "debit")}
    ids |= {rating.line_row(replace(line, kind="minimum"), run_of(1), "charge")[0]}
    assert len(ids) == 5
    invoices = {rating.invoice_rows(subject, [replace(line, currency=currency)], [], run)[0][0]
                for subject in ("acme", "beta") for currency in ("EUR", "USD")
                for run in (run_of(1), RatingRun("rate-2", NOV, DEC, 1, 0))}
    assert len(invoices) == 8


def test_charge_lines_read_back_as_they_were_written():
    line = Line("acme", "p", 1, "calls", "calls", '{"region": "eu"}', "per_unit", "usage",
                D("7"), 5, D("0.875"), D("0.88"), "EUR")
    _, row = rating.line_row(line, run_of(1), "charge")
    assert rating.line_from_row(row) == line
    minimum = replace(line, price_id=None, meter=None, model=None, kind="minimum",
                      quantity=None, event_count=None, unrounded=D("9.5"), amount=D("9.50"))
    assert rating.line_from_row(rating.line_row(minimum, run_of(1), "charge")[1]) == minimum
    subject, window = rating.usage_window(usage_row(0, "3", None) | {"dimensions": '{"a": "b"}'})
    assert (subject, window.dimensions, window.event_count) == ("acme", {"a": "b"}, 0)


def test_a_diff_record_is_sorted_json_that_keeps_non_ascii_text():
    added = Line("acme", "p", 1, "calls", "calls", '{"city": "z\u00fcrich"}', "per_unit",
                 "usage", D(2), 1, D("0.25"), D("0.25"), "EUR")
    record = rating.diff_record("debit", added, None)
    assert record == ('{"currency": "EUR", "difference": "0.25", "dimensions": '
                      '{"city": "z\u00fcrich"}, "kind": "usage", "line_type": "debit", '
                      '"new_amount": "0.25", "old_amount": null, "plan": "p", '
                      '"plan_version": 1, "price_id": "calls", "subject": "acme"}')



def test_a_diff_record_is_one_line_whatever_its_text_holds():
    """U+0085, U+2028 and U+2029 are raw text in JSON, but str.splitlines() (which reads
    diff.jsonl back) ends a line at each: they are written escaped."""
    added = Line("a\u2028b", "p", 1, "calls", "calls", '{"city": "x\u0085y\u2029z"}',
                 "per_unit", "usage", D(2), 1, D("0.25"), D("0.25"), "EUR")
    record = rating.diff_record("debit", added, None)
    assert record.splitlines() == [record]
    assert "\\u2028" in record and "\\u0085" in record and "\\u2029" in record
    parsed = json.loads(record)
    assert (parsed["subject"], parsed["dimensions"]) == ("a\u2028b", {"city": "x\u0085y\u2029z"})


# ---------------------------------------------------------------- the commit's decisions


@pytest.fixture
def no_waiting(monkeypatch):
    """The waits asked for (seconds, jittered), none of them slept."""
    waits = []
    monkeypatch.setattr(rating.random, "uniform", random.Random(7).uniform)
    monkeypatch.setattr(rating.time, "sleep", waits.append)
    return waits


def rating_ledger(period: Period, run_id: str, revision: int = 1) -> ledgers.RatingLedger:
    period.staging[run_id] = [f"{run_id}-line"]
    return ledgers.RatingLedger(period, run_id, revision)


def named(run_id: str, revision: int = 1) -> RatingRun:
    return replace(run_of(revision), run_id=run_id)


def test_a_rating_alone_commits_and_drops_its_staging(no_waiting):
    period = Period()
    period.committed("rate-0", 1)
    ledger = rating_ledger(period, "rate-1", revision=2)
    rating.commit_rating_through(ledger, named("rate-1", 2))
    assert period.revisions == {"rate-0": 1, "rate-1": 2} and period.staging == {}
    assert period.rows["rate-1"] == ["rate-1-line"] and period.withdrawn == []
    rating.commit_rating_through(ledger, named("rate-1", 2))  # a retried commit: the same
    assert period.revisions == {"rate-0": 1, "rate-1": 2} and no_waiting == []


def test_a_rating_against_a_revision_no_longer_the_latest_is_stale_and_leaves_nothing():
    period = Period()
    period.committed("rate-x", 1)
    period.committed("rate-y", 2)
    with pytest.raises(rating.StaleRating, match="^revision 2 of the period was committed "
                                                 "while rate-1 ran against revision 0: rate "
                                                 "again$"):
        rating.commit_rating_through(rating_ledger(period, "rate-1"), named("rate-1"))
    assert period.revisions == {"rate-x": 1, "rate-y": 2} and period.staging == {}
    assert period.withdrawn == ["rate-1"]  # its own rows, none of another run's


def test_a_rating_against_a_revision_nobody_committed_is_stale():
    """It read revision 1, which no run holds: its commit inserted nothing, so no run
    holds its revision 2 either, and it is not final."""
    period = Period()
    with pytest.raises(rating.StaleRating, match="^revision 0 of the period was committed "
                                                 "while rate-1 ran against revision 1"):
        rating.commit_rating_through(rating_ledger(period, "rate-1", 2), named("rate-1", 2))
    assert period.revisions == {} and period.withdrawn == ["rate-1"] and period.staging == {}


@pytest.mark.parametrize("rival_final", [False, True])
def test_of_two_ratings_holding_one_revision_one_gives_way(no_waiting, rival_final):
    """Both committed revision 1 in the same snapshot: the run gives way to a rival that
    is final even when it is first by run id, or to one first by run id."""
    mine, rival = ("rate-a", "rate-b") if rival_final else ("rate-b", "rate-a")
    period = Period()
    period.committed(rival, 1, staged=not rival_final)
    period.unseen = {rival}
    with pytest.raises(rating.StaleRating, match="revision 1 of the period"):
        rating.commit_rating_through(rating_ledger(period, mine), named(mine))
    assert period.revisions == {rival: 1} and period.withdrawn == [mine]
    assert mine not in period.staging and no_waiting == []


def test_the_first_rating_by_run_id_waits_for_a_rival_to_take_itself_back(no_waiting):
    period = Period()
    period.committed("rate-b", 1, staged=True)
    period.unseen = {"rate-b"}
    period.gives_way("rate-b", on_look=3)
    rating.commit_rating_through(rating_ledger(period, "rate-a"), named("rate-a"))
    assert period.revisions == {"rate-a": 1} and period.withdrawn == ["rate-b"]
    assert "rate-a" not in period.staging and len(no_waiting) == 2


def test_the_first_rating_gives_up_stale_when_its_rival_never_takes_itself_back(no_waiting):
    period = Period()
    period.committed("rate-b", 1, staged=True)
    period.unseen = {"rate-b"}
    with pytest.raises(rating.StaleRating, match="rate again"):
        rating.commit_rating_through(rating_ledger(period, "rate-a"), named("rate-a"))
    assert len(no_waiting) == rating.COMMIT_ATTEMPTS and period.withdrawn == ["rate-a"]
    assert all(0.2 <= w <= 0.5 for w in no_waiting) and len(set(no_waiting)) == len(no_waiting)
    assert period.revisions == {"rate-b": 1} and "rate-a" not in period.staging


class _Committing(rating._Commit):
    def __init__(self, period: Period, run: RatingRun):
        super().__init__(None, run)
        self._period = period

    def ledger(self):
        return ledgers.RatingLedger(self._period, self._run.run_id, self._run.revision)


def test_the_commit_step_commits_staged_rows_and_a_rating_with_none_commits_nothing():
    for rows, revisions in ((3, {"rate-1": 1}), (0, {})):
        period = Period(staging={"rate-1": ["line"]})
        (out,) = _Committing(period, run_of(1)).process(rows, {"lines": rows})
        assert out == {"lines": rows, "rows_written": rows, "committed": rows > 0}
        assert period.revisions == revisions and period.staging == {}


def test_commit_rating_commits_through_the_bigquery_ledger_of_its_target():
    """On a client answering as BigQuery would for a rating alone: the only holder."""
    client = ledgers.Recording([], [{"run_id": "rate-1"}])
    rating.commit_rating(client, TARGET, run_of(2))
    assert [p["previous_revision"] for _, p in client.sent] == [("INT64", 1)] * 2
    assert client.deleted == ["proj-1.ds.invoice_lines__staging_rate_1",
                              "proj-1.ds.invoices__staging_rate_1"]


@pytest.mark.parametrize("rows", [3, 0])
def test_commit_rating_commits_after_the_staged_writes_and_nothing_without_rows(rows):
    ledgers.PIPELINE_CLIENT.__init__([], [{"run_id": "rate-1"}])
    ledgers.PIPELINE_WRITES.__init__()
    streams = ("projects/p/datasets/d/tables/t/streams/a",) if rows else ()
    with TestPipeline() as p:
        summary = p | "Summary" >> beam.Create([{"lines": rows}])
        written = p | "Written" >> beam.Create([Written(rows, streams=streams)])
        out = (written, summary) | rating.CommitRating(ledgers.RecordingTarget("proj-1", "ds"),
                                                       run_of(1))
        assert_that(out, equal_to([{"lines": rows, "rows_written": rows,
                                    "committed": rows > 0}]))
    assert len(ledgers.PIPELINE_CLIENT.sent) == (2 if rows else 0)  # commit, holders
    assert list(ledgers.PIPELINE_WRITES.committed) == list(streams)  # made visible first
    assert ledgers.PIPELINE_CLIENT.deleted == ["proj-1.ds.invoice_lines__staging_rate_1",
                                               "proj-1.ds.invoices__staging_rate_1"]
