"""Every SQL statement tallyflow runs on its own tables, in one module, named one way.

A table is written `{name}` (its name in `schemas/tables.py`); the caller's
`BigQueryTarget.sql()` fills in the table of its dataset, backticked, and any
other `{part}` (a run's staging table, column lists). Values are always query
parameters (`@name`), never pasted in. One module rather than a folder of
`.sql` files: several statements are composed from shared parts (the usage
as of a time, the rule of the current recompute run), which Python strings
compose and files could only by a template language.

"""
from __future__ import annotations

# ---------------------------------------------------------------- usage as of a time

# Which committed recompute run `r` is current for a row `u`: none committed later
# (equal commit times: the greater run id) covers its window.
NEWER_RUN_COVERS = """newer.period_start <= u.window_start AND u.window_start < newer.period_end
      AND (newer.committed_at > r.committed_at
           OR (newer.committed_at = r.committed_at AND newer.run_id > r.run_id))"""

PERIOD_WINDOWS = "window_start >= @period_start AND window_start < @period_end"


def _where(*conditions: str | None) -> str:
    chosen = [c for c in conditions if c]
    return f"\n  WHERE {' AND '.join(chosen)}" if chosen else ""


def usage_parts(as_of: str | None = None, scope: str | None = None, prefix: str = "",
                runs: bool = True) -> str:
    """The CTEs `<prefix>latest_pane` (each window's latest streaming pane),
    `<prefix>runs` (the committed recompute runs) and `<prefix>recomputed` (the rows
    of each window's current run), as the tables stood at the timestamp `as_of`
    (None: now); `scope` filters the usage rows; without `runs`, no run counts (the
    usage as the stream alone had it)."""
    scoped = f"({scope})\n    AND " if scope else ""
    return f"""{prefix}latest_pane AS (
  SELECT subject, meter, dimensions, window_start, window_end, value, value_bignumeric,
         event_count, fingerprint, 'stream' AS origin, CAST(NULL AS INT64) AS revision,
         emitted_at AS as_of
  FROM {{usage_panes}}{_where(scope, as_of and f"emitted_at <= {as_of}")}
  QUALIFY ROW_NUMBER() OVER (
    PARTITION BY subject, meter, dimensions, window_start
    ORDER BY emitted_at DESC, pane_index DESC) = 1
),
{prefix}runs AS (
  SELECT run_id, revision, period_start, period_end, committed_at, reason
  FROM {{recompute_runs}}{_where(None if runs else "FALSE", as_of and f"committed_at <= {as_of}")}
),
{prefix}recomputed AS (
  SELECT u.subject, u.meter, u.dimensions, u.window_start, u.window_end, u.value,
         u.value_bignumeric, u.event_count, u.fingerprint, 'recompute' AS origin,
         r.revision AS revision, r.committed_at AS as_of
  FROM {{usage_recomputed}} u
  JOIN {prefix}runs r ON u.run_id = r.run_id
  WHERE {scoped}NOT EXISTS (
    SELECT 1 FROM {prefix}runs newer WHERE {NEWER_RUN_COVERS})
)"""


def usage_rows(prefix: str = "") -> str:
    """The usage of `usage_parts`: a window some run covers has its current run's rows,
    any other window its latest pane."""
    return f"""SELECT * FROM {prefix}recomputed
UNION ALL
SELECT * FROM {prefix}latest_pane p
WHERE NOT EXISTS (
  SELECT 1 FROM {prefix}runs r
  WHERE r.period_start <= p.window_start AND p.window_start < r.period_end)"""


# The `usage` view: the usage now.
USAGE = f"\nWITH {usage_parts()}\n{usage_rows()}\n"

# ---------------------------------------------------------------- reconcile

RECONCILE = f"""
INSERT INTO {{reconciliation}} (subject, meter, dimensions, window_start, window_end,
  stream_value, stream_event_count, stream_fingerprint, batch_value, batch_event_count,
  batch_fingerprint, value_difference, status, run_id, reconciled_at)
WITH {usage_parts(scope=PERIOD_WINDOWS)}
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
FROM latest_pane s
FULL OUTER JOIN recomputed b
  ON s.subject = b.subject AND s.meter = b.meter AND s.dimensions = b.dimensions
     AND s.window_start = b.window_start
"""

RUNS_OVERLAPPING = ("SELECT UNIX_MICROS(period_start) AS s, UNIX_MICROS(period_end) AS e "
                    "FROM {recompute_runs} "
                    "WHERE period_end > @period_start AND period_start < @period_end ORDER BY s")
RECONCILED_STATUSES = ("SELECT status, COUNT(*) AS n FROM {reconciliation} "
                       "WHERE run_id = @run_id GROUP BY status")
RECONCILED_DIFFERENCES = (
    "SELECT subject, meter, dimensions, window_start, status, stream_value, batch_value, "
    "stream_event_count, batch_event_count FROM {reconciliation} "
    "WHERE run_id = @run_id AND status != 'match' "
    "ORDER BY window_start, subject, meter, dimensions LIMIT {limit}")

# ---------------------------------------------------------------- recompute

# The commit transaction. Every statement reads the same snapshot, so both take the
# same next revision; both are no-ops when the run already committed (a retried
# commit), and the staged rows are deduplicated by key (a staging batch re-inserted
# after BigQuery's insert-id window is not counted twice). {columns}: those of
# usage_recomputed; {copied}: what each is set from.
_NEXT_REVISION = ("SELECT COALESCE(MAX(revision), 0) + 1 AS revision FROM {recompute_runs} "
                  "WHERE period_start = @period_start AND period_end = @period_end")
COMMIT_RECOMPUTE = f"""
BEGIN TRANSACTION;
INSERT INTO {{usage_recomputed}} ({{columns}})
SELECT {{copied}}
FROM {{staging}} s
CROSS JOIN ({_NEXT_REVISION}) n
WHERE NOT EXISTS (SELECT 1 FROM {{recompute_runs}} WHERE run_id = @run_id)
QUALIFY ROW_NUMBER() OVER (PARTITION BY s.subject, s.meter, s.dimensions, s.window_start
                           ORDER BY s.fingerprint, s.event_count) = 1;
INSERT INTO {{recompute_runs}} (run_id, revision, period_start, period_end, window_seconds,
                                reason, started_at, committed_at, summary)
SELECT @run_id, n.revision, @period_start, @period_end, @window_seconds, @reason, @started_at,
       @committed_at, @summary
FROM ({_NEXT_REVISION}) n
WHERE NOT EXISTS (SELECT 1 FROM {{recompute_runs}} WHERE run_id = @run_id);
COMMIT TRANSACTION;
"""
# The runs of the period that hold the same revision as this one (itself included).
SAME_REVISION_RUNS = """
SELECT o.run_id FROM {recompute_runs} o JOIN {recompute_runs} mine
  ON o.period_start = mine.period_start AND o.period_end = mine.period_end
     AND o.revision = mine.revision
WHERE mine.run_id = @run_id
"""
WITHDRAW_RECOMPUTE = """
BEGIN TRANSACTION;
DELETE FROM {usage_recomputed} WHERE run_id = @run_id;
DELETE FROM {recompute_runs} WHERE run_id = @run_id;
COMMIT TRANSACTION;
"""
COMMITTED_RUN = "SELECT revision, summary FROM {recompute_runs} WHERE run_id = @run_id"
# Runs of consecutive windows with too-late events no later recompute has covered.
DIRTY_WINDOWS = ("SELECT DISTINCT UNIX_MICROS(window_start) AS start_us FROM {late_events} l "
                 "WHERE NOT EXISTS (SELECT 1 FROM {recompute_runs} r "
                 "WHERE r.period_start <= l.window_start AND l.window_start < r.period_end "
                 "AND r.committed_at > l.ingest_time) ORDER BY start_us")

# ---------------------------------------------------------------- rating

PERIOD_USAGE = ("SELECT subject, meter, dimensions, UNIX_MICROS(window_start) AS start_us, "
                "value, value_bignumeric, event_count FROM {usage} WHERE " + PERIOD_WINDOWS)
PREVIOUS_CHARGE_LINES = ("SELECT * FROM {invoice_lines} "
                         "WHERE period_start = @period_start AND period_end = @period_end "
                         "AND revision = @revision AND line_type = 'charge'")
LATEST_RATING = ("SELECT COALESCE(MAX(revision), 0) AS revision FROM {invoices} "
                 "WHERE period_start = @period_start AND period_end = @period_end")
# The rating's commit: {copy_lines}, then {copy_invoices} (COPY_STAGED of each), in one
# transaction. Both read `invoices` as it was before it: they insert nothing unless
# the period's latest revision is still the one the run read.
COMMIT_RATING = "BEGIN TRANSACTION;\n{copy_lines}\n{copy_invoices}\nCOMMIT TRANSACTION;"
COPY_STAGED = f"""INSERT INTO {{table}} ({{columns}})
SELECT {{copied}} FROM {{staging}} s CROSS JOIN ({LATEST_RATING}) latest
WHERE latest.revision = @previous_revision;"""
# The runs holding a revision of the period (after a commit: whether two took the same).
RATING_HOLDERS = ("SELECT DISTINCT run_id FROM {invoices} WHERE period_start = @period_start "
                  "AND period_end = @period_end AND revision = @revision")
WITHDRAW_RATING = """
BEGIN TRANSACTION;
DELETE FROM {invoice_lines} WHERE run_id = @run_id;
DELETE FROM {invoices} WHERE run_id = @run_id;
COMMIT TRANSACTION;
"""

# ---------------------------------------------------------------- explain and statement

CUSTOMER_EXISTS = ("SELECT 1 AS found FROM {usage} WHERE subject = @subject "
                   "UNION ALL SELECT 1 AS found FROM {events} WHERE subject = @subject LIMIT 1")
CUSTOMER_METER_USAGE = ("SELECT * FROM {usage} WHERE subject = @subject AND meter = @meter "
                        "AND " + PERIOD_WINDOWS + " ORDER BY window_start, dimensions")

# Usage row -> its events. docs/analysts.md shows it verbatim (with `metering.`
# tables); tests/e2e/test_explain.py checks the two never drift apart.
LINEAGE = """
WITH run AS (
  SELECT period_start, period_end
  FROM {recompute_runs}
  WHERE period_start <= @window_start AND @window_start < period_end
  ORDER BY committed_at DESC
  LIMIT 1
),
scope AS (
  SELECT (SELECT period_start FROM run) AS scope_start,
         (SELECT period_end FROM run) AS scope_end
),
identities AS (
  SELECT DISTINCT source, id
  FROM {events}
  WHERE subject = @subject AND type = @event_type
    AND time >= @window_start AND time < @window_end
),
copies AS (
  SELECT e.source, e.id, e.subject, e.type, e.time, e.raw, e.ingest_time,
         e.message_id,
         ROW_NUMBER() OVER (PARTITION BY e.source, e.id
                            ORDER BY e.ingest_time, COALESCE(e.message_id, '')) AS copy_rank
  FROM {events} e
  JOIN identities i ON e.source = i.source AND e.id = i.id
  CROSS JOIN scope s
  WHERE s.scope_start IS NULL OR (e.time >= s.scope_start AND e.time < s.scope_end)
)
SELECT source, id, copy_rank,
       copy_rank = 1 AND type = @event_type
         AND time >= @window_start AND time < @window_end AS counted,
       time, ingest_time, message_id, raw
FROM copies
WHERE subject = @subject
ORDER BY time, source, id, copy_rank
"""

# What surrounds a customer's usage rows over a span, read once for all its windows.
EXPLAIN_SURROUNDING = {
    "late": "SELECT source, id, time, ingest_time, lateness_seconds, job_id FROM {late_events} "
            "WHERE subject = @subject AND type = @event_type "
            "AND time >= @span_start AND time < @span_end ORDER BY time, source, id",
    # copies the stream dropped, of identities this customer's events hold
    "stream_dropped": "SELECT d.source, d.id, d.message_id, d.kept_message_id, d.conflict, "
                      "d.seen_at, mine.time AS kept_time FROM {duplicate_events} d JOIN ("
                      "SELECT DISTINCT source, id, time FROM {events} "
                      "WHERE subject = @subject AND type = @event_type "
                      "AND time >= @span_start AND time < @span_end) mine "
                      "ON d.source = mine.source AND d.id = mine.id "
                      "ORDER BY d.seen_at, d.source, d.id",
    "panes": "SELECT dimensions, window_start, pane_index, pane_timing, is_final, emitted_at, "
             "value, value_bignumeric, event_count, fingerprint, job_id FROM {usage_panes} "
             "WHERE subject = @subject AND meter = @meter "
             "AND window_start >= @span_start AND window_start < @span_end "
             "ORDER BY emitted_at, pane_index",
    "runs": "SELECT run_id, revision, committed_at, reason, period_start, period_end "
            "FROM {recompute_runs} WHERE period_start < @span_end AND period_end > @span_start "
            "ORDER BY committed_at",
    "restated": "SELECT run_id, dimensions, window_start, value, value_bignumeric, event_count, "
                "fingerprint FROM {usage_recomputed} WHERE subject = @subject "
                "AND meter = @meter AND window_start >= @span_start "
                "AND window_start < @span_end",
}

_CUSTOMER_PERIOD = "subject = @subject AND " + PERIOD_WINDOWS
CUSTOMER_USAGE = ("SELECT meter, dimensions, window_start, window_end, value, value_bignumeric, "
                  "event_count, origin, revision FROM {usage} WHERE " + _CUSTOMER_PERIOD)


def corrections(since: bool) -> str:
    """Per usage key of the customer's period whose window's current run committed after
    @since: the figure now (`now_*`, a recompute's) and the figure the `usage` view showed
    at @since (`was_*`): the same usage, as of @since. Without `since`, against the figure
    the stream alone had (its latest pane)."""
    as_of = "@since" if since else None
    return f"""
WITH {usage_parts(scope=_CUSTOMER_PERIOD)},
{usage_parts(as_of, _CUSTOMER_PERIOD, prefix="was_", runs=since)},
current_usage AS (SELECT * FROM recomputed),
earlier_usage AS ({usage_rows("was_")}),
keyed AS (
  SELECT DISTINCT meter, dimensions, window_start
  FROM (SELECT meter, dimensions, window_start FROM current_usage
        UNION ALL SELECT meter, dimensions, window_start FROM earlier_usage)
)
SELECT u.meter, u.dimensions, u.window_start, r.run_id, r.revision, r.reason, r.committed_at,
       n.value AS now_value, n.value_bignumeric AS now_value_bignumeric,
       n.meter IS NOT NULL AS now_found,
       w.value AS was_value, w.value_bignumeric AS was_value_bignumeric,
       w.meter IS NOT NULL AS was_found
FROM keyed u
JOIN runs r ON r.period_start <= u.window_start AND u.window_start < r.period_end
LEFT JOIN current_usage n
  ON n.meter = u.meter AND n.dimensions = u.dimensions AND n.window_start = u.window_start
LEFT JOIN earlier_usage w
  ON w.meter = u.meter AND w.dimensions = u.dimensions AND w.window_start = u.window_start
WHERE NOT EXISTS (SELECT 1 FROM runs newer WHERE {NEWER_RUN_COVERS}){
    " AND r.committed_at > @since" if since else ""}
ORDER BY u.meter, u.dimensions, u.window_start
"""


RATING_LINES = ("SELECT meter, kind, line_type, amount, currency, revision, run_id "
                "FROM {invoice_lines} WHERE subject = @subject "
                "AND period_start = @period_start AND period_end = @period_end")
RATING_TOTALS = ("SELECT currency, total, revision FROM {invoices} WHERE subject = @subject "
                 "AND period_start = @period_start AND period_end = @period_end "
                 "AND revision = @revision")

# ---------------------------------------------------------------- the demo's report

DEMO_UNCOUNTED_REQUESTS = (
    "SELECT COUNT(*) AS n FROM {events} e WHERE type = 'api.request' "
    "AND NOT EXISTS (SELECT 1 FROM {late_events} l WHERE l.source = e.source AND l.id = e.id)")
DEMO_COUNTED_REQUESTS = ("SELECT COALESCE(SUM(event_count), 0) AS n FROM {usage} "
                         "WHERE meter = 'api_requests'")
ROW_COUNT = "SELECT COUNT(*) AS n FROM {table}"
EVENT_TIME_SPAN = ("SELECT UNIX_MICROS(MIN(time)) AS lo, UNIX_MICROS(MAX(time)) AS hi "
                   "FROM {events}")
DEMO_USAGE_BY_ORIGIN = (
    "SELECT subject, meter, SUM(value) AS total, SUM(event_count) AS events, "
    "COUNT(*) AS windows FROM {usage} WHERE origin = @origin "
    "AND meter IN ('api_requests', 'bytes_out', 'llm_input_tokens', 'llm_cost_usd') "
    "GROUP BY subject, meter ORDER BY subject, meter")
DEAD_LETTERS_BY_CODE = ("SELECT error_code, COUNT(*) AS n FROM {dead_letter} "
                        "GROUP BY error_code ORDER BY n DESC")
DEMO_CHANGES = (
    "SELECT window_start, subject, meter, dimensions, stream_value, batch_value, "
    "stream_event_count, batch_event_count, status FROM {reconciliation} "
    "WHERE run_id = @run_id AND status != 'match' "
    "ORDER BY status = 'value_mismatch' DESC, window_start, subject, meter LIMIT 12")

# ------------------------------------------------ limits (tallyflow settle-alerts, statement)

# Alerts of periods within [@start, @end) that no `cleared` row has settled yet.
OPEN_ALERTS = """
SELECT * EXCEPT (job_id, row_id) FROM {usage_alerts}
WHERE period_start >= @start AND period_end <= @end
QUALIFY COUNTIF(status = @cleared) OVER (PARTITION BY alert_id) = 0
"""
METER_PERIOD_VALUES = ("SELECT value, value_bignumeric FROM {usage} WHERE subject = @subject "
                       "AND meter = @meter AND window_start >= @start AND window_start < @end")
CUSTOMER_ALERTS = ("SELECT * FROM {usage_alerts} WHERE subject = @subject "
                   "AND period_start < @end AND period_end > @start")

# ---------------------------------------------------------------- export (tallyflow export)

EXPORT_USAGE = ("SELECT subject, meter, dimensions, UNIX_MICROS(window_start) AS ws, "
                "UNIX_MICROS(window_end) AS we, value, value_bignumeric, revision "
                "FROM {usage} WHERE " + PERIOD_WINDOWS
                + " ORDER BY subject, meter, window_start, dimensions")
# {columns}: every column but the timestamps, which come as UNIX_MICROS(column) AS column
EXPORT_LEDGER = ("SELECT {columns} FROM {exports} WHERE provider = @provider AND "
                 + PERIOD_WINDOWS)

# ------------------------------------------------ the stream's restore (--restore_open_windows)

# The first copy of each accepted event still open (or ingested since @since, when >= 0)
# and within the deduplication horizon.
REPLAY_OPEN_EVENTS = """
SELECT raw, message_id, UNIX_MICROS(ingest_time) AS ingest_us FROM {events}
WHERE time >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL @horizon SECOND)
  AND (time >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL @span SECOND)
       OR (@since >= 0 AND ingest_time >= TIMESTAMP_MICROS(@since)))
QUALIFY ROW_NUMBER() OVER (PARTITION BY source, id ORDER BY ingest_time) = 1
"""
# What was recorded since @since, as `recorded_key`s (transforms/streaming.py).
RECORDED_SINCE = """
SELECT 'dead_letter' AS t, message_id AS a, '' AS b FROM {dead_letter}
WHERE failed_at >= TIMESTAMP_MICROS(@since)
UNION ALL SELECT 'duplicate_events', message_id, '' FROM {duplicate_events}
WHERE seen_at >= TIMESTAMP_MICROS(@since)
UNION ALL SELECT 'late_events', source, id FROM {late_events}
WHERE ingest_time >= TIMESTAMP_MICROS(@since)
"""
# Thresholds crossed in periods still open after @lateness seconds.
OPEN_PERIOD_ALERTS = """
SELECT subject, meter, UNIX_MICROS(period_start) AS start_us, threshold FROM {usage_alerts}
WHERE status = @crossed
  AND period_end >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL @lateness SECOND)
"""
# Each window's current value, of the meters with limits ({meters}: quoted catalog keys).
RECENT_WINDOWS = """
SELECT subject, meter, dimensions, UNIX_MICROS(window_start) AS start_us, value,
       value_bignumeric FROM {usage}
WHERE window_start >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL @span SECOND)
  AND meter IN ({meters})
"""
