"""The BigQuery tables and views of SPEC §4, defined once.

Every other representation derives from these definitions: the
`google-cloud-bigquery` tables the local stack creates, the DDL that creates
them on BigQuery (docs/deploy.md) and the Beam `WriteToBigQuery` schemas; the
view's SQL is `schemas.sql.USAGE`. Usage
values are NUMERIC (29 integer and 9 fraction digits, exact); meters declared
`precision: BIGNUMERIC` write `value_bignumeric` instead, so no value ever
passes through a float or a narrower decimal.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from schemas import names
from schemas.sql import USAGE as USAGE_SQL


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # BigQuery standard SQL type name
    description: str
    mode: str = "NULLABLE"

    def bigquery_field(self):
        from google.cloud import bigquery

        return bigquery.SchemaField(self.name, self.type, mode=self.mode,
                                    description=self.description)

    def ddl(self) -> str:
        not_null = " NOT NULL" if self.mode == "REQUIRED" else ""
        return f"  `{self.name}` {self.type}{not_null} OPTIONS(description={_sql_string(self.description)})"


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]
    partition_field: str | None = None  # DAY partitioning on this TIMESTAMP column
    clustering: tuple[str, ...] = ()

    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def bigquery_schema(self) -> list:
        return [c.bigquery_field() for c in self.columns]

    def beam_schema(self) -> dict:
        """The schema in the JSON form `beam.io.WriteToBigQuery(schema=...)` accepts."""
        return {"fields": [{"name": c.name, "type": c.type, "mode": c.mode,
                            "description": c.description} for c in self.columns]}

    def renamed(self, name: str) -> "Table":
        """A table of the same shape under another name (e.g. a staging table)."""
        return replace(self, name=name)

    def bigquery_table(self, project: str, dataset: str):
        from google.cloud import bigquery

        table = bigquery.Table(f"{project}.{dataset}.{self.name}", schema=self.bigquery_schema())
        table.description = self.description
        if self.partition_field:
            table.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field=self.partition_field)
        if self.clustering:
            table.clustering_fields = list(self.clustering)
        return table

    def ddl(self, project: str, dataset: str) -> str:
        columns = ",\n".join(c.ddl() for c in self.columns)
        parts = [f"CREATE TABLE IF NOT EXISTS {names.table_reference(project, dataset, self.name)} "
                 f"(\n{columns}\n)"]
        if self.partition_field:
            parts.append(f"PARTITION BY DATE(`{self.partition_field}`)")
        if self.clustering:
            parts.append("CLUSTER BY " + ", ".join(f"`{c}`" for c in self.clustering))
        parts.append(f"OPTIONS(description={_sql_string(self.description)})")
        return "\n".join(parts)


@dataclass(frozen=True)
class View:
    name: str
    description: str
    sql: str  # names the tables it reads `{table}`, as schemas.sql does

    def query(self, project: str, dataset: str) -> str:
        return self.sql.format(**{t.name: names.table_reference(project, dataset, t.name)
                                  for t in TABLES})

    def ddl(self, project: str, dataset: str) -> str:
        return (f"CREATE OR REPLACE VIEW {names.table_reference(project, dataset, self.name)} "
                f"OPTIONS(description={_sql_string(self.description)}) AS\n"
                + self.query(project, dataset))


def _sql_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _usage_key_columns() -> tuple[Column, ...]:
    return (
        Column("subject", "STRING", "Customer id (CloudEvents `subject`).", "REQUIRED"),
        Column("meter", "STRING", "Meter key from the catalog.", "REQUIRED"),
        Column("dimensions", "STRING",
               "The meter's group-by values as a JSON object with sorted keys.", "REQUIRED"),
        Column("window_start", "TIMESTAMP", "Window start (inclusive), UTC.", "REQUIRED"),
        Column("window_end", "TIMESTAMP", "Window end (exclusive), UTC.", "REQUIRED"),
    )


def _usage_value_columns(prefix: str = "") -> tuple[Column, ...]:
    return (
        Column(f"{prefix}value", "NUMERIC",
               "Exact usage value (NULL for meters declared BIGNUMERIC)."),
        Column(f"{prefix}value_bignumeric", "BIGNUMERIC",
               "Exact usage value of a meter declared `precision: BIGNUMERIC`."),
        Column(f"{prefix}event_count", "INT64",
               "Deduplicated events that fed the value."),
        Column(f"{prefix}fingerprint", "STRING",
               "Order-independent fingerprint of the (source, id) identities behind the value."),
    )


EVENTS = Table(
    name="events",
    description="Every accepted (valid, first-seen) usage event: the source of truth for "
                "recompute and audit.",
    columns=(
        Column("source", "STRING", "CloudEvents `source`.", "REQUIRED"),
        Column("id", "STRING", "CloudEvents `id`; (source, id) is the identity.", "REQUIRED"),
        Column("type", "STRING", "CloudEvents `type`.", "REQUIRED"),
        Column("subject", "STRING", "Customer id.", "REQUIRED"),
        Column("time", "TIMESTAMP", "Event time (microseconds; `raw` keeps full precision).",
               "REQUIRED"),
        Column("raw", "STRING", "The event exactly as received (JSON), its data included: "
                                "what the recompute, the restore and explain re-read; "
                                "analysts read `JSON_VALUE(raw, '$.data.x')`.", "REQUIRED"),
        Column("ingest_time", "TIMESTAMP", "When the pipeline accepted the event.", "REQUIRED"),
        Column("message_id", "STRING", "Pub/Sub message id, or file:line for file input."),
        Column("job_id", "STRING", "The pipeline run that accepted the event."),
    ),
    partition_field="time",
    clustering=("subject", "type"),
)

USAGE_PANES = Table(
    name="usage_panes",
    description="One row per emitted streaming pane (accumulating): the provisional and "
                "on-time usage per subject x meter x dimensions x window.",
    columns=_usage_key_columns() + _usage_value_columns() + (
        Column("pane_timing", "STRING", "EARLY, ON_TIME or LATE.", "REQUIRED"),
        Column("pane_index", "INT64", "Index of the pane within its window.", "REQUIRED"),
        Column("is_final", "BOOL", "Whether this is the window's last pane.", "REQUIRED"),
        Column("emitted_at", "TIMESTAMP", "Processing time the pane was emitted.", "REQUIRED"),
        Column("job_id", "STRING", "The streaming job that emitted the pane."),
        Column("row_id", "STRING", "Deterministic id of the row, used as insert id.", "REQUIRED"),
    ),
    partition_field="window_start",
    clustering=("subject", "meter"),
)

USAGE_RECOMPUTED = Table(
    name="usage_recomputed",
    description="Batch recompute results per window of a recomputed period. Append-only: "
                "each run adds a revision; the latest revision of a period is authoritative.",
    columns=_usage_key_columns() + _usage_value_columns() + (
        Column("revision", "INT64", "Revision number of the period (1, 2, ...).", "REQUIRED"),
        Column("run_id", "STRING", "The recompute run that wrote the row.", "REQUIRED"),
        Column("recomputed_at", "TIMESTAMP", "When the run committed.", "REQUIRED"),
        Column("reason", "STRING", "Why the period was recomputed."),
        Column("period_start", "TIMESTAMP", "Start of the recomputed period.", "REQUIRED"),
        Column("period_end", "TIMESTAMP", "End (exclusive) of the recomputed period.", "REQUIRED"),
    ),
    partition_field="window_start",
    clustering=("subject", "meter"),
)

RECOMPUTE_RUNS = Table(
    name="recompute_runs",
    description="One row per committed recompute run: the revision of its period. A run's "
                "rows in `usage_recomputed` and this row become visible in one transaction; "
                "the latest run covering a window is authoritative for it.",
    columns=(
        Column("run_id", "STRING", "The recompute run.", "REQUIRED"),
        Column("revision", "INT64", "Revision of the period (1 for its first run).", "REQUIRED"),
        Column("period_start", "TIMESTAMP", "Start of the recomputed period.", "REQUIRED"),
        Column("period_end", "TIMESTAMP", "End (exclusive) of the recomputed period.",
               "REQUIRED"),
        Column("window_seconds", "INT64", "Window size of the run.", "REQUIRED"),
        Column("reason", "STRING", "Why the period was recomputed."),
        Column("started_at", "TIMESTAMP", "When the run started.", "REQUIRED"),
        Column("committed_at", "TIMESTAMP", "When its results became visible.", "REQUIRED"),
        Column("summary", "STRING", "Counts of the run as JSON (events read, duplicates, "
                                    "dead-lettered, rows)."),
    ),
    partition_field="period_start",
    clustering=("run_id",),
)

DEAD_LETTER = Table(
    name="dead_letter",
    description="Every rejected message or event, with the reason. Nothing is dropped.",
    columns=(
        Column("payload", "STRING", "The rejected payload as text (invalid UTF-8 replaced; "
                                    "clipped beyond 1 Mi characters)."),
        Column("payload_bytes", "BYTES", "The rejected payload exactly as received, only when "
                                         "`payload` is not it verbatim and whole: the payload "
                                         "is COALESCE(payload_bytes, CAST(payload AS BYTES))."),
        Column("attributes", "STRING", "Pub/Sub attributes as a JSON object."),
        Column("error_code", "STRING", "Stable error code (first problem).", "REQUIRED"),
        Column("error_message", "STRING", "Every problem found, human readable.", "REQUIRED"),
        Column("event_source", "STRING", "The event's `source`, when it could be read."),
        Column("event_id", "STRING", "The event's `id`, when it could be read."),
        Column("message_id", "STRING", "Pub/Sub message id, or file:line for file input."),
        Column("pipeline", "STRING", "The pipeline that rejected it.", "REQUIRED"),
        Column("job_id", "STRING", "The run that rejected it."),
        Column("failed_at", "TIMESTAMP", "When it was rejected.", "REQUIRED"),
    ),
    partition_field="failed_at",
    clustering=("error_code",),
)

LATE_EVENTS = Table(
    name="late_events",
    description="Accepted events that arrived after their window's allowed lateness. Their "
                "windows are marked for batch recompute; the events are also in `events`.",
    columns=(
        Column("source", "STRING", "CloudEvents `source`.", "REQUIRED"),
        Column("id", "STRING", "CloudEvents `id`.", "REQUIRED"),
        Column("subject", "STRING", "Customer id.", "REQUIRED"),
        Column("type", "STRING", "CloudEvents `type`.", "REQUIRED"),
        Column("time", "TIMESTAMP", "Event time.", "REQUIRED"),
        Column("window_start", "TIMESTAMP", "Start of the window the event belongs to.",
               "REQUIRED"),
        Column("window_end", "TIMESTAMP", "End of that window.", "REQUIRED"),
        Column("ingest_time", "TIMESTAMP", "When the pipeline received the event.", "REQUIRED"),
        Column("lateness_seconds", "NUMERIC",
               "How far past window end + allowed lateness it arrived.", "REQUIRED"),
        Column("job_id", "STRING", "The streaming job that saw it."),
    ),
    partition_field="window_start",
    clustering=("subject",),
)

DUPLICATE_EVENTS = Table(
    name="duplicate_events",
    description="Every copy of an identity after the first that the streaming pipeline "
                "dropped, for audit; `conflict` marks copies that would have billed "
                "differently (other subject, type, time or meter values).",
    columns=(
        Column("source", "STRING", "CloudEvents `source`.", "REQUIRED"),
        Column("id", "STRING", "CloudEvents `id`.", "REQUIRED"),
        Column("message_id", "STRING", "Where the dropped copy came from."),
        Column("kept_message_id", "STRING", "Where the kept (first) copy came from."),
        Column("conflict", "BOOL", "Whether the copy differed from the kept one.", "REQUIRED"),
        Column("seen_at", "TIMESTAMP", "When the dropped copy arrived.", "REQUIRED"),
        Column("job_id", "STRING", "The streaming job that dropped it."),
    ),
    partition_field="seen_at",
    clustering=("source", "id"),
)

RECONCILIATION = Table(
    name="reconciliation",
    description="Streaming vs recomputed usage per subject x meter x dimensions x window of a "
                "recomputed period. Values of BIGNUMERIC meters are compared but not copied "
                "here (the emulator's BIGNUMERIC is narrower than NUMERIC).",
    columns=_usage_key_columns() + (
        Column("stream_value", "NUMERIC", "Latest streaming pane value (NUMERIC meters)."),
        Column("stream_event_count", "INT64", "Latest streaming pane event count."),
        Column("stream_fingerprint", "STRING", "Latest streaming pane fingerprint."),
        Column("batch_value", "NUMERIC", "Recomputed value of the latest run (NUMERIC meters)."),
        Column("batch_event_count", "INT64", "Recomputed event count."),
        Column("batch_fingerprint", "STRING", "Recomputed fingerprint."),
        Column("value_difference", "NUMERIC", "batch_value - stream_value."),
        Column("status", "STRING",
               "match, value_mismatch, missing_in_stream or missing_in_batch.", "REQUIRED"),
        Column("run_id", "STRING", "The reconcile run.", "REQUIRED"),
        Column("reconciled_at", "TIMESTAMP", "When it ran.", "REQUIRED"),
    ),
    partition_field="window_start",
    clustering=("status", "subject"),
)

def _rating_columns() -> tuple[Column, ...]:
    return (
        Column("revision", "INT64", "Revision of the period's rating (1, 2, ...); every "
                                    "revision is kept.", "REQUIRED"),
        Column("run_id", "STRING", "The rating run that wrote the row.", "REQUIRED"),
        Column("rated_at", "TIMESTAMP", "When the rating run started.", "REQUIRED"),
    )


INVOICE_LINES = Table(
    name="invoice_lines",
    description="Rated usage (docs/pricing.md). Append-only: a rating run adds a revision "
                "of the period with its `charge` lines (the whole statement) and, from "
                "revision 2, `credit`/`debit` lines: the per-line change from the previous "
                "revision.",
    columns=(
        Column("subject", "STRING", "Customer id.", "REQUIRED"),
        Column("period_start", "TIMESTAMP", "Start of the rated period.", "REQUIRED"),
        Column("period_end", "TIMESTAMP", "End (exclusive) of the rated period.", "REQUIRED"),
        Column("plan", "STRING", "Plan id from the price book.", "REQUIRED"),
        Column("plan_version", "INT64", "Version of the plan (and so of the price).",
               "REQUIRED"),
        Column("price_id", "STRING", "Price id (stable across versions); NULL for a plan's "
                                     "minimum or maximum."),
        Column("meter", "STRING", "Meter the price reads; NULL for a plan's limits."),
        Column("dimensions", "STRING", "The matrix cell the line prices as a JSON object with "
                                       "sorted keys; {} when the price is not a matrix.",
               "REQUIRED"),
        Column("model", "STRING", "per_unit, package, graduated, volume, percentage or "
                                  "matrix; NULL for a plan's limits."),
        Column("kind", "STRING", "usage, minimum (true-up) or maximum (cap).", "REQUIRED"),
        Column("line_type", "STRING", "charge (a line of this revision), or debit / credit "
                                      "(its change from the previous revision).", "REQUIRED"),
        Column("quantity", "NUMERIC", "Usage quantity priced (for debit/credit: its change)."),
        Column("event_count", "INT64", "Events behind the quantity."),
        Column("unrounded_amount", "STRING", "Exact amount before rounding, as a decimal "
                                             "string (kept for audit).", "REQUIRED"),
        Column("amount", "NUMERIC", "Amount rounded half-up to the currency's minor unit.",
               "REQUIRED"),
        Column("previous_amount", "NUMERIC", "debit/credit: the line's amount in the "
                                             "previous revision (NULL: it had none)."),
        Column("currency", "STRING", "ISO 4217 currency of the plan.", "REQUIRED"),
    ) + _rating_columns(),
    partition_field="period_start",
    clustering=("subject", "revision"),
)

INVOICES = Table(
    name="invoices",
    description="One row per customer, currency and revision of a rated period: the sum of "
                "its rounded charge lines and the change from the previous revision.",
    columns=(
        Column("subject", "STRING", "Customer id.", "REQUIRED"),
        Column("period_start", "TIMESTAMP", "Start of the rated period.", "REQUIRED"),
        Column("period_end", "TIMESTAMP", "End (exclusive) of the rated period.", "REQUIRED"),
        Column("currency", "STRING", "ISO 4217 currency.", "REQUIRED"),
        Column("total", "NUMERIC", "Sum of the revision's rounded charge lines.", "REQUIRED"),
        Column("previous_total", "NUMERIC", "Total of the previous revision (NULL in "
                                            "revision 1)."),
        Column("adjustment", "NUMERIC", "total - previous_total: the sum of the revision's "
                                        "debit and credit lines."),
        Column("line_count", "INT64", "Charge lines of the revision.", "REQUIRED"),
        Column("reason", "STRING", "Why the period was rated (again)."),
    ) + _rating_columns(),
    partition_field="period_start",
    clustering=("subject", "revision"),
)

FAILED_WRITES = Table(
    name="failed_writes",
    description="Rows BigQuery can never accept (invalid, too large, or a value beyond its "
                "column), each with the reason and the whole row; the rest of their batch "
                "landed. A row longer than a part is split over parts 0..parts-1: "
                "concatenate `content` in part order.",
    columns=(
        Column("table_name", "STRING", "The table the row was meant for.", "REQUIRED"),
        Column("row_id", "STRING", "The row's insert id in that table.", "REQUIRED"),
        Column("error_code", "STRING", "ROW_INVALID, ROW_TOO_LARGE, VALUE_OUT_OF_RANGE or "
                                       "REQUEST_REJECTED.", "REQUIRED"),
        Column("reason", "STRING", "What BigQuery or the pipeline said about the row.",
               "REQUIRED"),
        Column("content", "STRING", "The row as JSON text (this part of it).", "REQUIRED"),
        Column("part", "INT64", "Index of this part (0, 1, ...).", "REQUIRED"),
        Column("parts", "INT64", "How many parts the row's content has.", "REQUIRED"),
        Column("failed_at", "TIMESTAMP", "When the row was given up.", "REQUIRED"),
    ),
    partition_field="failed_at",
    clustering=("table_name", "error_code"),
)

USAGE_ALERTS = Table(
    name="usage_alerts",
    description="Usage limit alerts (docs/limits.md): one `crossed` row the first time a "
                "customer's period-to-date usage of a meter reaches a threshold in a billing "
                "period, from provisional streaming panes; a `cleared` row with the same "
                "alert_id when the final usage of the period ends below it.",
    columns=(
        Column("alert_id", "STRING", "Deterministic: customer, meter, period and threshold.",
               "REQUIRED"),
        Column("status", "STRING", "crossed or cleared.", "REQUIRED"),
        Column("subject", "STRING", "Customer id.", "REQUIRED"),
        Column("meter", "STRING", "Meter key from the catalog.", "REQUIRED"),
        Column("period_start", "TIMESTAMP", "Billing period start (inclusive), UTC.",
               "REQUIRED"),
        Column("period_end", "TIMESTAMP", "Billing period end (exclusive), UTC.", "REQUIRED"),
        Column("threshold", "STRING", "The threshold as written: 80% or 1000.", "REQUIRED"),
        Column("threshold_quantity", "BIGNUMERIC", "The usage that reaches it.", "REQUIRED"),
        Column("value", "BIGNUMERIC", "Period-to-date usage when it crossed (cleared: the "
                                      "period's final usage).", "REQUIRED"),
        Column("crossed_at", "TIMESTAMP", "Processing time of the crossing pane (cleared: of "
                                          "the clearing run).", "REQUIRED"),
        Column("dimensions", "STRING", "The crossing pane's group-by values (JSON)."),
        Column("window_start", "TIMESTAMP", "The crossing pane's window start."),
        Column("window_end", "TIMESTAMP", "The crossing pane's window end."),
        Column("pane_timing", "STRING", "The crossing pane's timing: EARLY, ON_TIME or LATE."),
        Column("pane_index", "INT64", "The crossing pane's index in its window."),
        Column("job_id", "STRING", "The job or run that wrote the row."),
        Column("row_id", "STRING", "Insert id: alert_id and status.", "REQUIRED"),
    ),
    partition_field="period_start",
    clustering=("subject", "meter"),
)

EXPORTS = Table(
    name="exports",
    description="The billing-provider export ledger (docs/export.md), append-only: one row "
                "per request state (pending before the call, then sent or failed) of each "
                "thing sent to Stripe, Orb or Lago. The latest row of an idempotency key is "
                "its state; a rerun sends only what the ledger does not already hold.",
    columns=(
        Column("provider", "STRING", "stripe, orb or lago.", "REQUIRED"),
        Column("object_type", "STRING", "What was sent: meter_event, meter_event_adjustment, "
                                        "event or backfill.", "REQUIRED"),
        Column("idempotency_key", "STRING", "Deterministic key of the request (Stripe "
                                            "identifier, Orb idempotency_key, Lago "
                                            "transaction_id, or a backfill's key).", "REQUIRED"),
        Column("provider_object", "STRING", "The provider's id of what it created."),
        Column("supersedes", "STRING", "Key this request cancels or replaces (corrections)."),
        Column("subject", "STRING", "tallyflow customer id.", "REQUIRED"),
        Column("customer", "STRING", "The provider's customer (or subscription) id.",
               "REQUIRED"),
        Column("meter", "STRING", "tallyflow meter key.", "REQUIRED"),
        Column("provider_meter", "STRING", "The provider's meter event name or code.",
               "REQUIRED"),
        Column("dimensions", "STRING", "Dimensions as a JSON object with sorted keys.",
               "REQUIRED"),
        Column("window_start", "TIMESTAMP", "Window start (a backfill: its timeframe start).",
               "REQUIRED"),
        Column("window_end", "TIMESTAMP", "Window end, exclusive.", "REQUIRED"),
        Column("period_start", "TIMESTAMP", "Start of the exported period.", "REQUIRED"),
        Column("period_end", "TIMESTAMP", "End (exclusive) of the exported period.", "REQUIRED"),
        Column("revision", "INT64", "Revision of the usage row (NULL: a streaming pane)."),
        Column("exact_value", "NUMERIC", "tallyflow's exact window value this request brings "
                                         "the provider to."),
        Column("quantity", "NUMERIC", "The value sent: Stripe whole units, Orb the exact "
                                      "value, Lago the exact change.", "REQUIRED"),
        Column("remainder", "NUMERIC", "Stripe: exact running total minus whole units sent, "
                                       "carried to the next window of the customer x meter."),
        Column("request", "STRING", "The request body as JSON (resent verbatim after a crash).",
               "REQUIRED"),
        Column("requested_at", "TIMESTAMP", "When the request was (first) made.", "REQUIRED"),
        Column("response", "STRING", "The provider's response or error (trimmed)."),
        Column("status", "STRING", "pending, sent, failed or cancelled.", "REQUIRED"),
        Column("attempts", "INT64", "HTTP attempts made (retries of 429/5xx included)."),
        Column("run_id", "STRING", "The export run.", "REQUIRED"),
        Column("recorded_at", "TIMESTAMP", "When this state was recorded.", "REQUIRED"),
    ),
    partition_field="window_start",
    clustering=("provider", "subject"),
)

EXPORT_RECONCILIATION = Table(
    name="export_reconciliation",
    description="A billing provider's totals vs tallyflow's, per subject x meter of an "
                "exported period (`tallyflow reconcile --provider`).",
    columns=(
        Column("provider", "STRING", "stripe, orb or lago.", "REQUIRED"),
        Column("subject", "STRING", "tallyflow customer id.", "REQUIRED"),
        Column("customer", "STRING", "The provider's customer id."),
        Column("meter", "STRING", "tallyflow meter key.", "REQUIRED"),
        Column("period_start", "TIMESTAMP", "Start of the period.", "REQUIRED"),
        Column("period_end", "TIMESTAMP", "End (exclusive) of the period.", "REQUIRED"),
        Column("usage_value", "NUMERIC", "Exact total of the `usage` view."),
        Column("expected_value", "NUMERIC", "What the provider should hold (Stripe: the exact "
                                            "total rounded once)."),
        Column("ledger_value", "NUMERIC", "What the ledger says the provider holds."),
        Column("provider_value", "NUMERIC", "What the provider reports."),
        Column("difference", "NUMERIC", "provider_value - expected_value."),
        Column("status", "STRING", "MATCH or DIFFERENT.", "REQUIRED"),
        Column("reason", "STRING", "Which sides differ."),
        Column("run_id", "STRING", "The reconcile run.", "REQUIRED"),
        Column("reconciled_at", "TIMESTAMP", "When it ran.", "REQUIRED"),
    ),
    partition_field="period_start",
    clustering=("provider", "status"),
)

TABLES: tuple[Table, ...] = (EVENTS, USAGE_PANES, USAGE_RECOMPUTED, RECOMPUTE_RUNS, DEAD_LETTER,
                             LATE_EVENTS, DUPLICATE_EVENTS, RECONCILIATION, INVOICE_LINES,
                             INVOICES, FAILED_WRITES, USAGE_ALERTS, EXPORTS,
                             EXPORT_RECONCILIATION)

USAGE_VIEW = View(
    name="usage",
    description="Exact current usage per subject x meter x dimensions x window: for a window "
                "some committed recompute covers, the rows of the latest such run; otherwise "
                "the latest streaming pane.",
    sql=USAGE_SQL,
)

VIEWS: tuple[View, ...] = (USAGE_VIEW,)


def table(name: str) -> Table:
    for t in TABLES:
        if t.name == name:
            return t
    raise KeyError(f"no table named {name!r}; tables: {', '.join(t.name for t in TABLES)}")
