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

from pipelines.policy import DIFFERENCE, SUCCESS, run_command
from pipelines.options import add_table_arguments
from schemas import names
from schemas.tables import (NEWER_RUN_COVERS, RECOMPUTE_RUNS, RECONCILIATION, USAGE_PANES,
                            USAGE_RECOMPUTED)
from schemas.values import format_time, parse_rfc3339, printable
from transforms.bigquery import BigQueryTarget

_SQL = """
INSERT INTO `{reconciliation}` (subject, meter, dimensions, window_start, window_end,
  stream_value, stream_event_count, stream_fingerprint, batch_value, batch_event_count,
  batch_fingerprint, value_difference, status, run_id, reconciled_at)
WITH stream AS (
  SELECT subject, meter, dimensions, window_start, window_end, value, value_bignumeric,
         event_count, fingerprint
  FROM `{panes}`
  WHERE window_start >= @period_start AND window_start < @period_end
  QUALIFY ROW_NUMBER() OVER (
    PARTITION BY subject, meter, dimensions, window_start
    ORDER BY emitted_at DESC, pane_index DESC) = 1
),
batch AS (
  SELECT u.subject, u.meter, u.dimensions, u.window_start, u.window_end, u.value,
         u.value_bignumeric, u.event_count, u.fingerprint
  FROM `{recomputed}` u JOIN `{runs}` r ON u.run_id = r.run_id
  WHERE u.window_start >= @period_start AND u.window_start < @period_end
    AND NOT EXISTS (SELECT 1 FROM `{runs}` newer WHERE {newer_run_covers})
)
SELECT COALESCE(s.subject, b.subject), COALESCE(s.meter, b.meter),
       COALESCE(s.dimensions, b.dimensions), COALESCE(s.window_start, b.window_start),
       COALESCE(s.window_end, b.window_end),
       s.value, s.event_count, s.fingerprint, b.value, b.event_count, b.fingerprint,
       b.value - s.value,
       CASE
         WHEN s.subject IS NULL THEN 'missing_in_stream'
         WHEN b.subject IS NULL THEN 'missing_in_batch'
         WHEN s.value IS NOT DISTINCT FROM b.value
              AND s.value_bignumeric IS NOT DISTINCT FROM b.value_bignumeric
              AND s.event_count = b.event_count AND s.fingerprint = b.fingerprint
           THEN 'match'
         ELSE 'value_mismatch'
       END,
       @run_id, @reconciled_at
FROM stream s
FULL OUTER JOIN batch b
  ON s.subject = b.subject AND s.meter = b.meter AND s.dimensions = b.dimensions
     AND s.window_start = b.window_start
"""

STATUSES = ("match", "value_mismatch", "missing_in_stream", "missing_in_batch")


def uncovered(client, target: BigQueryTarget, start_ns: int, end_ns: int) -> list[tuple]:
    """Parts of [start, end) no committed recompute run covers."""
    from google.cloud import bigquery

    runs = client.query(
        f"SELECT UNIX_MICROS(period_start) AS s, UNIX_MICROS(period_end) AS e "
        f"FROM `{target.table_id(RECOMPUTE_RUNS)}` "
        f"WHERE period_end > @period_start AND period_start < @period_end ORDER BY s",
        job_config=bigquery.QueryJobConfig(query_parameters=_period(start_ns, end_ns))).result()
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
    from google.cloud import bigquery

    gaps = uncovered(client, target, start_ns, end_ns)
    if gaps:
        spans = ", ".join(f"{format_time(s)}..{format_time(e)}" for s, e in gaps)
        raise ValueError(f"no recompute covers {spans}: run tallyflow recompute first")
    run_id = run_id or names.new_run_id("reconcile")
    now = time.time_ns()
    params = _period(start_ns, end_ns) + [
        bigquery.ScalarQueryParameter("run_id", "STRING", run_id),
        bigquery.ScalarQueryParameter("reconciled_at", "TIMESTAMP", format_time(now - now % 1000))]
    sql = _SQL.format(reconciliation=target.table_id(RECONCILIATION),
                      panes=target.table_id(USAGE_PANES),
                      recomputed=target.table_id(USAGE_RECOMPUTED),
                      runs=target.table_id(RECOMPUTE_RUNS), newer_run_covers=NEWER_RUN_COVERS)
    client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=params)).result()
    counts = client.query(
        f"SELECT status, COUNT(*) AS n FROM `{target.table_id(RECONCILIATION)}` "
        f"WHERE run_id = @run_id GROUP BY status",
        job_config=bigquery.QueryJobConfig(query_parameters=params[2:3])).result()
    return run_id, {row["status"]: row["n"] for row in counts}


def differences(client, target: BigQueryTarget, run_id: str, limit: int = 20) -> list[dict]:
    from google.cloud import bigquery

    rows = client.query(
        f"SELECT subject, meter, dimensions, window_start, status, stream_value, batch_value, "
        f"stream_event_count, batch_event_count FROM `{target.table_id(RECONCILIATION)}` "
        f"WHERE run_id = @run_id AND status != 'match' "
        f"ORDER BY window_start, subject, meter, dimensions LIMIT {int(limit)}",
        job_config=bigquery.QueryJobConfig(query_parameters=[
            bigquery.ScalarQueryParameter("run_id", "STRING", run_id)])).result()
    return [dict(row.items()) for row in rows]


def _period(start_ns: int, end_ns: int) -> list:
    from google.cloud import bigquery

    return [bigquery.ScalarQueryParameter("period_start", "TIMESTAMP", format_time(start_ns)),
            bigquery.ScalarQueryParameter("period_end", "TIMESTAMP", format_time(end_ns))]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tallyflow reconcile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--period-start", "--period_start", dest="period_start", required=True,
                        help="Start of the period (RFC 3339, inclusive).")
    parser.add_argument("--period-end", "--period_end", dest="period_end", required=True,
                        help="End of the period (RFC 3339, exclusive).")
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
    start, end = parse_rfc3339(args.period_start), parse_rfc3339(args.period_end)
    if not args.project:
        raise ValueError("--bigquery_project (or GOOGLE_CLOUD_PROJECT) is required")
    target = BigQueryTarget(args.project, args.dataset, args.endpoint or None)
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
