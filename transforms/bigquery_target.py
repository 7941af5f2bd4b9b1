"""Where tallyflow's tables live, and the one way every caller reaches them.

The pipelines' workers, the reports, the local stack and the demo all go
through a `BigQueryTarget`: its `client()` (on an emulator endpoint:
anonymous credentials and short retries, so a dead emulator fails in seconds
instead of looking like a hang), its table naming (`sql()` fills the
`{table}` placeholders of `schemas.sql` with backticked, checked names) and
`query()` with (name, type, value) parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

from schemas import names
from schemas.tables import TABLES, VIEWS, Table
from schemas.values import format_time

# Emulator errors are bugs or bad requests, not outages: give up in seconds
# instead of the client's default ten minutes, which looks like a hang.
EMULATOR_RETRY_SECONDS = 20.0
EMULATOR_REQUEST_TIMEOUT = 60.0


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
        """project.dataset.table, as the client API takes it."""
        name = table if isinstance(table, str) else table.name
        return f"{self.project}.{self.dataset}.{names.bigquery_table(name)}"

    def table(self, table: Table | str) -> str:
        """The table as SQL names it."""
        return names.table_reference(self.project, self.dataset,
                                     table if isinstance(table, str) else table.name)

    def sql(self, statement: str, **parts) -> str:
        """`statement` (of `schemas.sql`) with every `{table}` placeholder of a tallyflow
        table or view named in this dataset; `parts` fill the others (a Table: its name
        here, e.g. a run's staging table; text: as it is)."""
        tables = {t.name: self.table(t) for t in TABLES + VIEWS}
        return statement.format(**tables, **{
            key: self.table(value) if isinstance(value, Table) else value
            for key, value in parts.items()})

    def client(self):
        from google.cloud import bigquery

        if not self.endpoint:
            return bigquery.Client(project=self.project)
        return _emulator_client(self.endpoint, self.project)

    def read_client(self):
        """A Storage Read API client for this target (`transforms.storage_read`)."""
        from transforms.storage_read import read_client

        return read_client(self._storage_endpoint())

    def write_client(self):
        """A Storage Write API client for this target (`transforms.storage_write`)."""
        from transforms.storage_write import write_client

        return write_client(self._storage_endpoint())

    def _storage_endpoint(self) -> str | None:
        if self.endpoint and not self.storage_endpoint:
            raise ValueError("an emulator endpoint needs its Storage API gRPC address too: "
                             "--bigquery_storage_endpoint (or BIGQUERY_STORAGE_EMULATOR_HOST)")
        return self.storage_endpoint


def _emulator_client(endpoint: str, project: str):
    """A `bigquery.Client` on an emulator: anonymous, with short retries and timeouts."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    class EmulatorClient(bigquery.Client):
        def _call_api(self, retry, *args, **kwargs):
            if retry is not None:
                retry = retry.with_timeout(EMULATOR_RETRY_SECONDS)
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = EMULATOR_REQUEST_TIMEOUT
            return super()._call_api(retry, *args, **kwargs)

        def query(self, *args, **kwargs):
            from google.cloud.bigquery.retry import DEFAULT_JOB_RETRY

            kwargs.setdefault("job_retry", DEFAULT_JOB_RETRY.with_timeout(EMULATOR_RETRY_SECONDS))
            return super().query(*args, **kwargs)

    return EmulatorClient(project=project, credentials=AnonymousCredentials(),
                          client_options=ClientOptions(api_endpoint=endpoint))


def query_config(params):
    """A query's job configuration from (name, type, value) parameters."""
    from google.cloud import bigquery

    return bigquery.QueryJobConfig(query_parameters=[
        bigquery.ScalarQueryParameter(name, kind, value) for name, kind, value in params])


def query(client, sql: str, params=()) -> list[dict]:
    """The rows of one parameterised query (or script), as dicts."""
    return [dict(row.items()) for row in client.query(sql, job_config=query_config(params))
            .result()]


def exists(client, target: BigQueryTarget, table: Table) -> bool:
    from google.api_core.exceptions import NotFound

    try:
        client.get_table(target.table_id(table))
    except NotFound:
        return False
    return True


def timestamp(name: str, ns: int) -> tuple:
    """A TIMESTAMP parameter; BigQuery keeps microseconds, so the nanoseconds are cut."""
    return name, "TIMESTAMP", format_time(ns - ns % 1000)


def period_parameters(start_ns: int, end_ns: int) -> list[tuple]:
    """@period_start and @period_end, the bounds of every period query."""
    return [timestamp("period_start", start_ns), timestamp("period_end", end_ns)]
