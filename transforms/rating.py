"""Rating a closed period: usage windows and the previous revision in, invoice rows out.

`RateSubjects` groups the period's usage rows and the previous revision's
charge lines by customer (plus every customer the price book assigns a plan in
the period, so fixed fees and minimums are billed without usage), prices them
with `schemas.pricing.rate_subject` and compares them with
`schemas.pricing.adjustments`. `CommitRating` makes a revision visible in one
transaction, after its staged rows are written, as a recompute does.
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

import apache_beam as beam

from schemas.pricing import Line, PriceBook, UsageWindow, adjustments, exact_sum, rate_subject
from schemas import sql
from schemas.tables import INVOICE_LINES, INVOICES, Table
from schemas.values import EXACT, format_decimal, format_time, one_line
from transforms.bigquery_target import BigQueryTarget, exists, period_parameters, query
from transforms.restate import FINAL, WITHDRAW, CommitAfterWrites, settle
from transforms.rows import row_id, timestamp

NS_PER_US = 1000


@dataclass(frozen=True)
class RatingRun:
    run_id: str
    period_start_ns: int
    period_end_ns: int
    revision: int
    rated_ns: int
    reason: str = ""

    @property
    def previous_revision(self) -> int:
        return self.revision - 1

    def staging(self, table: Table, run_id: str | None = None) -> Table:
        """This run's (or another rating run's) staging table of `table`."""
        return table.renamed(f"{table.name}__staging_{(run_id or self.run_id).replace('-', '_')}")

    def common(self) -> dict:
        return {"period_start": format_time(self.period_start_ns),
                "period_end": format_time(self.period_end_ns),
                "revision": self.revision, "run_id": self.run_id,
                "rated_at": timestamp(self.rated_ns)}


def usage_window(row: dict) -> tuple[str, UsageWindow]:
    """A row of the `usage` view (queried with UNIX_MICROS(window_start) AS start_us)."""
    value = row["value"] if row["value"] is not None else row["value_bignumeric"]
    return row["subject"], UsageWindow(
        meter=row["meter"], dimensions=json.loads(row["dimensions"]),
        window_start=row["start_us"] * NS_PER_US, value=Decimal(value),
        event_count=row["event_count"] or 0)


def line_from_row(row: dict) -> Line:
    """A charge line read back from `invoice_lines`."""
    return Line(subject=row["subject"], plan=row["plan"], plan_version=row["plan_version"],
                price_id=row["price_id"], meter=row["meter"], dimensions=row["dimensions"],
                model=row["model"], kind=row["kind"],
                quantity=None if row["quantity"] is None else Decimal(row["quantity"]),
                event_count=row["event_count"], unrounded=Decimal(row["unrounded_amount"]),
                amount=Decimal(row["amount"]), currency=row["currency"])


def _number(value: Decimal | None) -> str | None:
    return None if value is None else format_decimal(value)


def line_row(line: Line, run: RatingRun, line_type: str,
             previous: Line | None = None) -> tuple[str, dict]:
    row = {
        "subject": line.subject, "plan": line.plan, "plan_version": line.plan_version,
        "price_id": line.price_id, "meter": line.meter, "dimensions": line.dimensions,
        "model": line.model, "kind": line.kind, "line_type": line_type,
        "quantity": _number(line.quantity), "event_count": line.event_count,
        "unrounded_amount": format_decimal(line.unrounded), "amount": _number(line.amount),
        "previous_amount": _number(previous.amount) if previous else None,
        "currency": line.currency, **run.common(),
    }
    return row_id("line", run.run_id, line_type, *line.key), row


def invoice_rows(subject: str, lines: list[Line], previous: list[Line], run: RatingRun
                 ) -> list[tuple[str, dict]]:
    """One invoice per currency the customer is billed in, now or in the previous revision."""
    rows = []
    for currency in sorted({line.currency for line in lines + previous}):
        total = exact_sum(line.amount for line in lines if line.currency == currency)
        before = (exact_sum(line.amount for line in previous if line.currency == currency)
                  if run.previous_revision else None)
        rows.append((row_id("invoice", run.run_id, subject, currency), {
            "subject": subject, "currency": currency, "total": format_decimal(total),
            "previous_total": _number(before),
            "adjustment": _number(None if before is None else EXACT.subtract(total, before)),
            "line_count": sum(1 for line in lines if line.currency == currency),
            "reason": run.reason, **run.common()}))
    return rows


def diff_record(line_type: str, difference: Line, previous: Line | None) -> str:
    """One line of `rate --diff`: what a line was, is, and the debit or credit."""
    return one_line(json.dumps({
        "subject": difference.subject, "plan": difference.plan,
        "plan_version": difference.plan_version, "price_id": difference.price_id,
        "dimensions": json.loads(difference.dimensions), "kind": difference.kind,
        "currency": difference.currency, "line_type": line_type,
        "old_amount": _number(previous.amount) if previous else None,
        "new_amount": format_decimal(EXACT.add(previous.amount if previous else 0,
                                               difference.amount)),
        "difference": format_decimal(difference.amount),
    }, sort_keys=True, ensure_ascii=False))


LINES, INVOICE_ROWS, DIFF, COUNTS = "lines", "invoices", "diff", "counts"


class _RateSubject(beam.DoFn):
    def __init__(self, book: PriceBook, run: RatingRun):
        self._book = book
        self._run = run

    def process(self, element):
        subject, grouped = element
        usage, previous_rows = list(grouped["usage"]), list(grouped["previous"])
        run = self._run
        rated = rate_subject(self._book, subject, run.period_start_ns, run.period_end_ns, usage)
        previous = [line_from_row(row) for row in previous_rows]
        for line in rated.lines:
            yield beam.pvalue.TaggedOutput(LINES, line_row(line, run, "charge"))
        changes = adjustments(previous, list(rated.lines)) if run.previous_revision else []
        for line_type, difference, before in changes:
            yield beam.pvalue.TaggedOutput(LINES, line_row(difference, run, line_type, before))
            yield beam.pvalue.TaggedOutput(DIFF, diff_record(line_type, difference, before))
        invoices = invoice_rows(subject, list(rated.lines), previous, run)
        for invoice in invoices:
            yield beam.pvalue.TaggedOutput(INVOICE_ROWS, invoice)
        counts = Counter({"subjects": 1, "usage_rows": len(usage), "lines": len(rated.lines),
                          "adjustment_lines": len(changes), "invoices": len(invoices)})
        counts.update({f"unpriced/{reason}": n for reason, n in rated.unpriced.items()})
        for _, invoice in invoices:
            currency = invoice["currency"]
            counts[f"total/{currency}"] = EXACT.add(counts[f"total/{currency}"],
                                                    Decimal(invoice["total"]))
            if invoice["adjustment"] is not None:
                counts[f"adjustment/{currency}"] = EXACT.add(counts[f"adjustment/{currency}"],
                                                             Decimal(invoice["adjustment"]))
        yield beam.pvalue.TaggedOutput(COUNTS, counts)


class RateSubjects(beam.PTransform):
    """(usage view rows, previous charge line rows, assigned subjects) -> a dict of
    PCollections: `lines` and `invoices` ((row_id, row) for BigQuery), `diff` (JSON
    text per changed line) and `counts` (one Counter per customer)."""

    def __init__(self, book: PriceBook, run: RatingRun):
        super().__init__()
        self._book = book
        self._run = run

    def expand(self, inputs):
        usage, previous, subjects = inputs
        grouped = {
            "usage": usage | "KeyUsage" >> beam.Map(usage_window),
            "previous": previous | "KeyPrevious" >> beam.Map(lambda row: (row["subject"], row)),
            "assigned": subjects | "KeySubjects" >> beam.Map(lambda subject: (subject, None)),
        } | "BySubject" >> beam.CoGroupByKey()
        results = grouped | "Rate" >> beam.ParDo(_RateSubject(self._book, self._run)).with_outputs(
            LINES, INVOICE_ROWS, DIFF, COUNTS)
        return {name: results[name] for name in (LINES, INVOICE_ROWS, DIFF, COUNTS)}


class _SumCounts(beam.CombineFn):
    """Counters whose values may be exact Decimals (money totals)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, counts):
        for key, value in counts.items():
            if key not in acc:
                acc[key] = value
            elif isinstance(value, Decimal) or isinstance(acc[key], Decimal):
                acc[key] = EXACT.add(acc[key], value)
            else:
                acc[key] += value
        return acc

    def merge_accumulators(self, accs):
        merged = {}
        for acc in accs:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc):
        return {key: format_decimal(value) if isinstance(value, Decimal) else value
                for key, value in sorted(acc.items())}


class SummarizeRating(beam.PTransform):
    """Counts per customer -> one summary dict of the run."""

    def __init__(self, run: RatingRun, context: dict):
        super().__init__()
        self._run = run
        self._context = context

    def expand(self, counts):
        run, context = self._run, self._context
        return (counts
                | "Sum" >> beam.CombineGlobally(_SumCounts())
                | "Describe" >> beam.Map(lambda totals: {
                    **context, "run_id": run.run_id, "revision": run.revision,
                    "period_start": format_time(run.period_start_ns),
                    "period_end": format_time(run.period_end_ns), **totals}))


def latest_revision(client, target: BigQueryTarget, start_ns: int, end_ns: int) -> int:
    """The period's latest committed revision (0: never rated)."""
    return query(client, target.sql(sql.LATEST_RATING),
                 period_parameters(start_ns, end_ns))[0]["revision"]


def create_staging(client, target: BigQueryTarget, run: RatingRun) -> None:
    for table in (INVOICE_LINES, INVOICES):
        client.create_table(run.staging(table).bigquery_table(target.project, target.dataset))


class StaleRating(RuntimeError):
    """Another rating of the period committed a revision while this one ran: its
    adjustments are relative to a revision that is no longer the latest."""


COMMIT_ATTEMPTS = 40


def commit_rating(client, target: BigQueryTarget, run: RatingRun) -> None:
    """Appends the staged lines and invoices in one transaction (`commit_rating_through`
    on BigQuery)."""
    commit_rating_through(RatingLedger(client, target, run), run)


class RatingLedger:
    """A rating run's side of BigQuery, one method per statement of its commit
    (schemas/sql.py): `commit_rating_through` decides, this only sends, so the decisions
    are tested against a ledger of the test's own and these statements on the emulator."""

    def __init__(self, client, target: BigQueryTarget, run: RatingRun):
        self._client, self._target, self._run = client, target, run
        self._params = period_parameters(run.period_start_ns, run.period_end_ns) + [
            ("run_id", "STRING", run.run_id), ("revision", "INT64", run.revision),
            ("previous_revision", "INT64", run.previous_revision)]

    def commit(self) -> None:
        """The commit transaction: inserts nothing unless the period's latest revision is
        still the run's previous one."""
        copies = {key: self._target.sql(
                      sql.COPY_STAGED, table=table, staging=self._run.staging(table),
                      columns=", ".join(table.column_names()),
                      copied=", ".join(f"s.{c}" for c in table.column_names()))
                  for key, table in (("copy_lines", INVOICE_LINES), ("copy_invoices", INVOICES))}
        query(self._client, self._target.sql(sql.COMMIT_RATING, **copies), self._params)

    def holders(self) -> set[str]:
        """The runs holding the run's revision of the period."""
        return {r["run_id"] for r in query(self._client, self._target.sql(sql.RATING_HOLDERS),
                                           self._params)}

    def staged(self, run_id: str) -> bool:
        """Whether that rating run still has its staging tables (is not final yet)."""
        return exists(self._client, self._target, self._run.staging(INVOICES, run_id))

    def withdraw(self) -> None:
        """Takes the run's lines and invoices back, in one transaction."""
        query(self._client, self._target.sql(sql.WITHDRAW_RATING), self._params)

    def drop_staging(self) -> None:
        for table in (INVOICE_LINES, INVOICES):
            self._client.delete_table(self._target.table_id(self._run.staging(table)),
                                      not_found_ok=True)

    def latest_revision(self) -> int:
        return latest_revision(self._client, self._target, self._run.period_start_ns,
                               self._run.period_end_ns)


def commit_rating_through(ledger: RatingLedger, run: RatingRun) -> None:
    """Commits `run` through `ledger`; StaleRating when it must give way.

    The commit inserts nothing unless the period's latest revision is still the one
    this run read. Two ratings that read the same revision can still both commit
    (appends do not conflict, on BigQuery or the emulator), so each checks after its
    commit which runs hold its revision and settles as a recompute does
    (`restate.settle`): the one that must give way takes its rows back and is stale.
    Idempotent: a retried commit of a committed run inserts nothing and finds itself
    committed.
    """
    ledger.commit()
    for _ in range(COMMIT_ATTEMPTS):
        holders = ledger.holders()
        step = settle(run.run_id, holders, ledger.staged) if run.run_id in holders else WITHDRAW
        if step == FINAL:
            ledger.drop_staging()
            return
        if step == WITHDRAW:
            break
        time.sleep(random.uniform(0.2, 0.5))  # the first by run id waits for the others
    ledger.withdraw()
    ledger.drop_staging()
    raise StaleRating(f"revision {ledger.latest_revision()} of the period was committed while "
                      f"{run.run_id} ran against revision {run.previous_revision}: rate again")


class _Commit(beam.DoFn):
    def __init__(self, target: BigQueryTarget, run: RatingRun):
        self._target = target
        self._run = run

    def ledger(self) -> RatingLedger:
        return RatingLedger(self._target.client(), self._target, self._run)

    def process(self, rows_written, summary):
        ledger = self.ledger()
        if rows_written:
            commit_rating_through(ledger, self._run)
        else:
            ledger.drop_staging()
        yield {**summary, "rows_written": rows_written, "committed": bool(rows_written)}


class CommitRating(CommitAfterWrites):
    """Commits a rating run once its rows are staged. A run with nothing to bill commits
    nothing and adds no revision."""

    def __init__(self, target: BigQueryTarget, run: RatingRun):
        super().__init__(_Commit(target, run), target)

