"""Reconcile: streaming vs recomputed usage for a period, row by row.

For every subject x meter x dimensions x window of the period it compares the
latest streaming pane with the latest recompute run covering the window:
value, event count and fingerprint. Statuses: match, value_mismatch (value,
count or fingerprint differ), missing_in_stream, missing_in_batch. Results are
appended to `reconciliation` under a run id; the command prints a summary and
exits 1 when anything differs, so it can gate invoicing.

One SQL statement in BigQuery (no Beam job: both sides are already aggregated).
"""
from __future__ import annotations

import argparse
import sys
import time

from pipelines.options import (add_period_arguments, add_table_arguments, parse_period,
                               table_target)
from pipelines.policy import DIFFERENCE, SUCCESS, run_command
from schemas import names, sql
from schemas.values import format_time, printable
from transforms.bigquery_target import BigQueryTarget, period_parameters, query, timestamp

STATUSES = ("match", "value_mismatch", "missing_in_stream", "missing_in_batch")


def uncovered(client, target: BigQueryTarget, start_ns: int, end_ns: int) -> list[tuple]:
    """Parts of [start, end) no committed recompute run covers."""
    runs = query(client, target.sql(sql.RUNS_OVERLAPPING), period_parameters(start_ns, end_ns))
    gaps, cursor = [], start_ns
    for run in runs:
        s, e = run["s"] * 1000, run["e"] * 1000
        if s > cursor:
            gaps.append((cursor, min(s, end_ns)))
        cursor = max(cursor, e)
    if cursor < end_ns:
        gaps.append((cursor, end_ns))
    return gaps


def reconcile(client, target: BigQueryTarget, start_ns: int, end_ns: int,
              run_id: str | None = None) -> tuple[str, dict]:
    """Writes the period's reconciliation; returns (run id, {status: rows})."""
    gaps = uncovered(client, target, start_ns, end_ns)
    if gaps:
        spans = ", ".join(f"{format_time(s)}..{format_time(e)}" for s, e in gaps)
        raise ValueError(f"no recompute covers {spans}: run tallyflow recompute first")
    run_id = run_id or names.new_run_id("reconcile")
    run = [("run_id", "STRING", run_id)]
    query(client, target.sql(sql.RECONCILE), period_parameters(start_ns, end_ns) + run + [
        timestamp("reconciled_at", time.time_ns())])
    counts = query(client, target.sql(sql.RECONCILED_STATUSES), run)
    return run_id, {row["status"]: row["n"] for row in counts}


def differences(client, target: BigQueryTarget, run_id: str, limit: int = 20) -> list[dict]:
    return query(client, target.sql(sql.RECONCILED_DIFFERENCES, limit=str(int(limit))),
                 [("run_id", "STRING", run_id)])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tallyflow reconcile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_period_arguments(parser)
    parser.add_argument("--provider", choices=("stripe", "orb", "lago"),
                        help="Reconcile a billing provider with usage and the exports ledger "
                             "instead (`tallyflow reconcile --provider stripe --help`).")
    add_table_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--provider" or a.startswith("--provider=") for a in argv):
        from tallyflow.export import reconcile as provider_reconcile

        return provider_reconcile.main(argv)
    args = _parser().parse_args(argv)
    return run_command("tallyflow reconcile", lambda: _reconcile_and_report(args))


def _reconcile_and_report(args) -> int:
    start, end = parse_period(args.period_start, args.period_end)
    target = table_target(args)
    client = target.client()
    run_id, counts = reconcile(client, target, start, end)
    total = sum(counts.values())
    print(f"reconciliation {run_id}: {format_time(start)} .. {format_time(end)}, {total} rows")
    for status in STATUSES:
        print(f"  {status:<18} {counts.get(status, 0)}")
    for row in differences(client, target, run_id):
        print(printable(f"  {row['status']:<18} {row['window_start']:%Y-%m-%dT%H:%MZ} "
                        f"{row['subject']} {row['meter']} {row['dimensions']}: stream "
                        f"{row['stream_value']} ({row['stream_event_count']} events) vs batch "
                        f"{row['batch_value']} ({row['batch_event_count']} events)"))
    return SUCCESS if counts.keys() <= {"match"} else DIFFERENCE


if __name__ == "__main__":
    sys.exit(main())
