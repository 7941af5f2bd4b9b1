"""Rate: exact usage of a closed period priced into invoice lines, as a new revision.

It reads the period's usage from the BigQuery `usage` view (the latest
recompute where one exists) and the price book (`--prices`), prices every
window with the assignment and plan version in effect at its start (tier,
package and allowance positions count the whole period), and writes
`invoice_lines` (every line unrounded and rounded half-up to the currency's
minor unit) and one `invoices` row per customer and currency (the sum of its
rounded lines).

Every run adds a revision of the period and never edits an earlier one: from
revision 2 it also writes, per line, the debit or credit from the previous
revision (after a retroactive price change, or a recompute). The lines go to
staging tables, then one transaction appends them with the invoices. With
`--diff` nothing is written: it prints old vs new per changed line and per
invoice.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.options import (UsageOptions, add_price_book, bigquery_target,
                               load_catalog_anywhere, load_price_book_anywhere, parse_period,
                               print_help)
from pipelines.policy import quiet_beam, run_command
from schemas import names, sql
from schemas.pricing import PriceBook
from schemas.tables import INVOICE_LINES, INVOICES
from schemas.values import printable
from transforms.bigquery import WriteRows
from transforms.bigquery_target import period_parameters
from transforms.files import WriteSortedLines
from transforms.outcomes import WriteJson
from transforms.storage_read import ReadQueryStreams, arrow_rows
from transforms.rating import (COUNTS, DIFF, INVOICE_ROWS, LINES, CommitRating, RateSubjects,
                               RatingRun, SummarizeRating, create_staging, latest_revision)
from transforms.runner import is_dataflow

PIPELINE_NAME = "rate_usage"


class RateOptions(UsageOptions):
    """Rating's own flags; --meters and the BigQuery flags are UsageOptions'."""

    @classmethod
    def _add_argparse_args(cls, parser):
        add_price_book(parser)
        parser.add_argument("--period_start", "--period-start", dest="period_start",
                            help="Start of the billing period (RFC 3339, inclusive).")
        parser.add_argument("--period_end", "--period-end", dest="period_end",
                            help="End of the billing period (RFC 3339, exclusive).")
        parser.add_argument("--diff", action="store_true", default=False,
                            help="Show old vs new per changed line and invoice; write nothing.")
        parser.add_argument("--reason", default="",
                            help="Why the period is rated (again); kept with the invoices.")
        parser.add_argument("--output_dir", "--output-dir", dest="output_dir",
                            help="Write summary.json (and with --diff, diff.jsonl) here "
                                 "(default: a temporary directory).")


def check_arguments(options: RateOptions) -> tuple[int, int]:
    """The validated period [start, end) in ns. Beam options cannot be `required`."""
    for name in ("prices", "period_start", "period_end"):
        if not getattr(options, name):
            raise ValueError(f"--{name} is required")
    return parse_period(options.period_start, options.period_end)


def build(pipeline: beam.Pipeline, options: RateOptions, book: PriceBook, run: RatingRun,
          output_dir: str | None):
    """Composes the rating on `pipeline`; returns the summary PCollection."""
    target = bigquery_target(options)
    period = period_parameters(run.period_start_ns, run.period_end_ns)
    usage = (pipeline
             | "ReadUsage" >> ReadQueryStreams(target, target.sql(sql.PERIOD_USAGE), period)
             | "UsageRows" >> beam.FlatMap(arrow_rows))
    if run.previous_revision:
        previous = (pipeline
                    | "ReadPreviousLines" >> ReadQueryStreams(
                        target, target.sql(sql.PREVIOUS_CHARGE_LINES),
                        period + [("revision", "INT64", run.previous_revision)])
                    | "PreviousLineRows" >> beam.FlatMap(arrow_rows))
    else:
        previous = pipeline | "NoPreviousLines" >> beam.Create([])
    subjects = pipeline | "AssignedSubjects" >> beam.Create(
        book.subjects_in(run.period_start_ns, run.period_end_ns))

    rated = (usage, previous, subjects) | "Rate" >> RateSubjects(book, run)
    summary = rated[COUNTS] | "Summarize" >> SummarizeRating(run, {
        "prices": options.prices, "diff": bool(options.diff), "reason": run.reason})
    if options.diff:
        if output_dir:
            _ = rated[DIFF] | "WriteDiff" >> WriteSortedLines(f"{output_dir}/diff.jsonl")
            _ = (rated[INVOICE_ROWS]
                 | "InvoiceLines" >> beam.Map(lambda keyed: json.dumps(keyed[1], sort_keys=True))
                 | "WriteInvoices" >> WriteSortedLines(f"{output_dir}/invoices.jsonl"))
    else:
        staged_lines = rated[LINES] | "StageLines" >> WriteRows(target,
                                                               run.staging(INVOICE_LINES))
        staged_invoices = rated[INVOICE_ROWS] | "StageInvoices" >> WriteRows(
            target, run.staging(INVOICES))
        written = (staged_lines, staged_invoices) | "Written" >> beam.Flatten()
        summary = (written, summary) | "Commit" >> CommitRating(target, run)
    if output_dir:
        _ = summary | "WriteSummary" >> WriteJson(f"{output_dir}/summary.json")
    return summary


def run(argv: list[str] | None = None) -> dict:
    """Rates the period; returns the run's summary (and, with --diff, the changes)."""
    options = PipelineOptions(argv)
    rate = options.view_as(RateOptions)
    start, end = check_arguments(rate)
    book = load_price_book_anywhere(rate.prices)
    if rate.meters:  # optional here: checks every price names a meter and its group-by keys
        book.check_meters(load_catalog_anywhere(rate.meters))
    target = bigquery_target(rate)
    client = target.client()
    revision = latest_revision(client, target, start, end) + 1
    rating = RatingRun(names.new_run_id("rate"), start, end, revision, time.time_ns(),
                       rate.reason or ("requested" if revision == 1 else "re-rated"))
    dataflow = is_dataflow(options.view_as(StandardOptions).runner)
    output_dir = (rate.output_dir or (None if dataflow else
                                      tempfile.mkdtemp(prefix="tallyflow-rate-")))
    output_dir = output_dir and output_dir.rstrip("/")
    if not rate.diff:
        create_staging(client, target, rating)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, rate, book, rating, output_dir)
    result = pipeline.run()
    if dataflow:  # a template launch must not wait for its job
        return {"run_id": rating.run_id, "revision": revision, "submitted": True}
    result.wait_until_finish()
    summary = _read_json(f"{output_dir}/summary.json")
    if rate.diff:
        summary["changes"] = _read_lines(f"{output_dir}/diff.jsonl")
        summary["invoices"] = _read_lines(f"{output_dir}/invoices.jsonl")
    return summary


def _read_json(path: str):
    with FileSystems.open(path) as f:
        return json.load(f)


def _read_lines(path: str) -> list[dict]:
    if not FileSystems.exists(path):
        return []
    with FileSystems.open(path) as f:
        return [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line]


def print_diff(summary: dict) -> None:
    """Old vs new, per changed line and per invoice, as a reader would check them."""
    print(f"rating of {summary['period_start']} .. {summary['period_end']}: revision "
          f"{summary['revision'] - 1} -> {summary['revision']} (not written: --diff)")
    changes = summary["changes"]
    if not changes:
        print("  no line changes")
    for change in changes:
        cell = json.dumps(change["dimensions"], sort_keys=True)
        print(printable(f"  {change['line_type']:<6} {change['subject']} {change['plan']} "
                        f"v{change['plan_version']} {change['price_id'] or '(plan)'} {cell} "
                        f"{change['kind']}: {change['old_amount'] or '-'} -> "
                        f"{change['new_amount']} ({_signed(change['difference'])} "
                        f"{change['currency']})"))
    for invoice in summary["invoices"]:
        print(printable(f"  invoice {invoice['subject']} {invoice['currency']}: "
                        f"{invoice['previous_total'] or '-'} -> {invoice['total']}"))


def _signed(text: str) -> str:
    return text if text.startswith("-") else f"+{text}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help("tallyflow rate", __doc__, RateOptions)
        return 0
    quiet_beam()
    print("tallyflow rate: running the batch pipeline ...", file=sys.stderr)
    return run_command("tallyflow rate", lambda: report(run(argv)))


def report(summary: dict) -> None:
    if summary.get("diff"):
        print_diff(summary)
    else:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(main())
