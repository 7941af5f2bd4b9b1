"""BigQuery sinks and sources that behave the same on BigQuery and on the local emulator.

Beam's `WriteToBigQuery`/`ReadFromBigQuery` cannot be pointed at an
emulator, so the default path uses the `google-cloud-bigquery` client, whose
endpoint is configurable: `WriteRows` sends batches through the streaming
insert API (`insertAll`) with a deterministic insert id per row, so a retried
bundle or a redelivered message cannot add a row twice (BigQuery and
local-bigquery drop a repeated insert id). On Dataflow, `--bigquery_write_method
STORAGE_WRITE_API` or `STREAMING_INSERTS` uses Beam's own connector instead.
"""
from __future__ import annotations

import re
import time
import typing
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from schemas import names
from schemas.tables import Table

CLIENT_METHOD = "INSERT_ALL"
BEAM_METHODS = ("STREAMING_INSERTS", "STORAGE_WRITE_API")
WRITE_METHODS = (CLIENT_METHOD,) + BEAM_METHODS
MAX_BATCH = 500  # rows per insertAll request
BUFFER_SECONDS = 1  # streaming: longest a row waits for its batch to fill


class ExpansionServiceUnavailable(RuntimeError):
    """A Beam cross-language write (STORAGE_WRITE_API) cannot be built: no Java
    expansion service (its jar is downloaded from Maven on first use)."""


@dataclass(frozen=True)
class BigQueryTarget:
    """Where tables live: a project and dataset, on BigQuery or an emulator endpoint."""

    project: str
    dataset: str
    endpoint: str | None = None  # e.g. http://127.0.0.1:9050 for the emulator
    retry_seconds: float = 120.0
    storage_endpoint: str | None = None  # the emulator's Storage API gRPC host:port

    def __post_init__(self):
        """Names go into SQL between backticks: only names BigQuery itself allows."""
        names.bigquery_project(self.project)
        names.bigquery_dataset(self.dataset)

    def table_id(self, table: Table | str) -> str:
        name = table if isinstance(table, str) else table.name
        return f"{self.project}.{self.dataset}.{names.bigquery_table(name)}"

    def client(self):
        from google.cloud import bigquery

        if not self.endpoint:
            return bigquery.Client(project=self.project)
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        return bigquery.Client(project=self.project, credentials=AnonymousCredentials(),
                               client_options=ClientOptions(api_endpoint=self.endpoint))

    def read_client(self):
        """A Storage Read API client for this target (`transforms.storage_read`)."""
        from transforms.storage_read import read_client

        if self.endpoint and not self.storage_endpoint:
            raise ValueError("an emulator endpoint needs its Storage API gRPC address too: "
                             "--bigquery_storage_endpoint (or BIGQUERY_STORAGE_EMULATOR_HOST)")
        return read_client(self.storage_endpoint)


class _InsertBatch(beam.DoFn):
    def __init__(self, target: BigQueryTarget, table: Table):
        self._target = target
        self._table = table
        self._client = None

    def setup(self):
        self._client = self._target.client()

    def process(self, batch):
        rows = [row for _, row in batch]
        row_ids = [row_id for row_id, _ in batch]
        deadline = time.monotonic() + self._target.retry_seconds
        delay = 0.5
        while True:
            try:
                errors = self._client.insert_rows_json(self._target.table_id(self._table), rows,
                                                       row_ids=row_ids, timeout=30)
            except Exception as e:  # transient API errors: retry, insert ids keep it idempotent
                errors = [{"index": -1, "errors": [{"message": str(e)}]}]
            if not errors:
                yield len(rows)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"insert into {self._table.name} failed: {errors[:3]}")
            time.sleep(delay)
            delay = min(delay * 2, 10)


class WriteRows(beam.PTransform):
    """(row_id, row dict) -> rows in `table`, at most once per row_id; outputs the number
    of rows of each written batch (INSERT_ALL), so later steps can wait for the writes.

    With a Beam method, the rows go through `beam.io.WriteToBigQuery` instead
    (Dataflow); row ids are then Beam's own.
    """

    def __init__(self, target: BigQueryTarget, table: Table, method: str = CLIENT_METHOD):
        super().__init__()
        if method not in WRITE_METHODS:
            raise ValueError(f"write method must be one of {', '.join(WRITE_METHODS)}")
        self._target = target
        self._table = table
        self._method = method

    def expand(self, keyed_rows):
        if self._method in BEAM_METHODS:
            rows = keyed_rows | "Rows" >> beam.Values()
            try:
                return rows | "WriteToBigQuery" >> beam.io.WriteToBigQuery(
                    self._target.table_id(self._table).replace(".", ":", 1),
                    schema=self._table.beam_schema(),
                    method=self._method,
                    create_disposition=beam.io.BigQueryDisposition.CREATE_NEVER,
                    write_disposition=beam.io.BigQueryDisposition.WRITE_APPEND)
            except RuntimeError as error:
                if "jar" not in str(error):
                    raise
                # The Storage Write API is a cross-language transform: building the
                # pipeline starts Beam's Java expansion service from a Maven jar.
                jar = re.search(r"[\w.-]+\.jar", str(error))
                raise ExpansionServiceUnavailable(
                    f"--bigquery_write_method {self._method} needs Beam's Java expansion "
                    f"service to build the pipeline, and its jar "
                    f"({jar.group(0) if jar else 'from Maven'}) could not be fetched: stage "
                    f"it in ~/.apache_beam/cache/jars/ (Java on PATH), or use "
                    f"STREAMING_INSERTS or {CLIENT_METHOD}") from error
        if keyed_rows.is_bounded:
            batches = keyed_rows | "Batch" >> beam.BatchElements(min_batch_size=1,
                                                                 max_batch_size=MAX_BATCH)
        else:
            # Streaming bundles are small (the DirectRunner hands a stateful DoFn's
            # output over one key at a time), and one insertAll costs ~0.3 s on the
            # emulator and a quota unit on BigQuery: buffer across bundles instead.
            # Rows carry their own window bounds, so the global window loses nothing.
            table = self._table.name
            batches = (keyed_rows
                       | "GlobalWindow" >> beam.WindowInto(GlobalWindows())
                       | "KeyByTable" >> beam.Map(lambda row: (table, row)).with_output_types(
                           typing.Tuple[str, typing.Any])
                       | "Batch" >> beam.GroupIntoBatches.WithShardedKey(
                           MAX_BATCH, max_buffering_duration_secs=BUFFER_SECONDS)
                       | "Unkey" >> beam.Values())
        return batches | "InsertAll" >> beam.ParDo(_InsertBatch(self._target, self._table))


class _RunQuery(beam.DoFn):
    def __init__(self, target: BigQueryTarget):
        self._target = target

    def process(self, query):
        sql, params = query
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(query_parameters=[
            bigquery.ScalarQueryParameter(name, kind, value) for name, kind, value in params])
        client = self._target.client()
        for row in client.query(sql, job_config=config).result():
            yield dict(row.items())


class QueryRows(beam.PTransform):
    """Runs one parameterised query and emits its rows as dicts.

    A DoFn around the client rather than `ReadFromBigQuery`, for the emulator;
    fine for the bounded reads tallyflow does (a period of events, a replay).
    """

    def __init__(self, target: BigQueryTarget, sql: str, params: list[tuple] = ()):
        super().__init__()
        self._target = target
        self._query = (sql, list(params))

    def expand(self, pbegin):
        return (pbegin
                | "Query" >> beam.Create([self._query])
                | "Rows" >> beam.ParDo(_RunQuery(self._target)))
