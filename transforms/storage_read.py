"""Reading BigQuery tables in parallel over the Storage Read API, in Arrow.

`ReadTableStreams` opens one read session when the pipeline runs (a template
launch reads the data of its run, not of its build), restricted to the rows
and columns asked for, so BigQuery prunes partitions and columns. The server
splits the session into at most `max_streams` streams; the stream names are
reshuffled, and each stream is read in a bundle of its own by whichever
worker gets it. Nothing reads a whole period in one place.

Why a transform of our own and not Beam's `ReadFromBigQuery(method=DIRECT_READ)`:
Beam's cannot be pointed at an emulator (its Storage and table clients have no
endpoint), so the path the tests run would not be the one production runs.
This is the same code on BigQuery and on the local emulator, built on the
official `google-cloud-bigquery-storage` client; only the gRPC endpoint
differs. What it gives up is Beam's dynamic splitting of a stream that
turns out to be slow; the server's initial split into up to `max_streams`
streams (default: `DEFAULT_MAX_STREAMS`) keeps workers busy instead.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas.tables import Table
from transforms.bigquery_target import query_config

# Streams asked for when the caller sets no maximum: enough to keep a few
# hundred worker cores busy; BigQuery returns fewer for small reads (the
# emulator: one per 100,000 rows).
DEFAULT_MAX_STREAMS = 1000
# Where a local emulator's Storage API listens (host:port), like BIGQUERY_EMULATOR_HOST.
STORAGE_EMULATOR_ENV = "BIGQUERY_STORAGE_EMULATOR_HOST"
# The official client's own channel options (its generated gRPC transport): no
# message size limit. An emulator sends a stream's rows in batches of up to a
# million rows, hundreds of MB, which gRPC's default 4 MB limit (or any fixed
# one) refuses.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1),
                   ("grpc.max_receive_message_length", -1)]


def read_client(endpoint: str | None):
    """A Storage Read client: BigQuery's own, or an emulator's gRPC `host:port`."""
    from google.cloud import bigquery_storage_v1

    if not endpoint:
        return bigquery_storage_v1.BigQueryReadClient()
    import grpc
    from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
        BigQueryReadGrpcTransport)

    channel = grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
    return bigquery_storage_v1.BigQueryReadClient(
        transport=BigQueryReadGrpcTransport(channel=channel))


class _OpenSession(beam.DoFn):
    """Opens the read session on a table, or on the result of a query (run first, as
    Beam's own DIRECT_READ does: the Storage API reads tables, not views)."""

    def __init__(self, target, table: str | None, columns: tuple[str, ...],
                 row_restriction: str, max_streams: int, query: tuple | None = None):
        self._target = target
        self._table = table
        self._columns = columns
        self._row_restriction = row_restriction
        self._max_streams = max_streams
        self._query = query
        self._streams = Metrics.distribution("storage_read", "streams_per_session")

    def _table_path(self) -> str:
        if self._query is None:
            target = self._target
            return f"projects/{target.project}/datasets/{target.dataset}/tables/{self._table}"
        sql, params = self._query
        job = self._target.client().query(sql, job_config=query_config(params))
        job.result()
        result = job.destination
        return f"projects/{result.project}/datasets/{result.dataset_id}/tables/{result.table_id}"

    def process(self, _):
        from google.cloud.bigquery_storage_v1 import types

        requested = types.ReadSession(
            table=self._table_path(), data_format=types.DataFormat.ARROW,
            read_options=types.ReadSession.TableReadOptions(
                selected_fields=list(self._columns), row_restriction=self._row_restriction))
        session = self._target.read_client().create_read_session(
            parent=f"projects/{self._target.project}", read_session=requested,
            max_stream_count=self._max_streams)
        self._streams.update(len(session.streams))
        schema = session.arrow_schema.serialized_schema
        for stream in session.streams:
            yield stream.name, schema


class _ReadStream(beam.DoFn):
    """(stream name, serialized Arrow schema) -> the stream's pyarrow RecordBatches.

    The client's stream reader resumes from its offset after a transient
    error, so a retried connection neither skips nor repeats rows.
    """

    def __init__(self, target):
        self._target = target
        self._client = None
        self._rows = Metrics.counter("storage_read", "rows")

    def setup(self):
        self._client = self._target.read_client()

    def process(self, stream):
        import pyarrow as pa

        name, schema = stream
        schema = pa.ipc.read_schema(pa.py_buffer(schema))
        for response in self._client.read_rows(name):
            batch = pa.ipc.read_record_batch(
                pa.py_buffer(response.arrow_record_batch.serialized_record_batch), schema)
            self._rows.inc(batch.num_rows)
            yield batch


class _ReadStreams(beam.PTransform):
    def __init__(self, target, session: _OpenSession):
        super().__init__()
        self._open = session
        self._read = _ReadStream(target)

    def expand(self, pbegin):
        return (pbegin
                | "Session" >> beam.Create([None])
                | "OpenSession" >> beam.ParDo(self._open)
                | "SpreadStreams" >> beam.Reshuffle()
                | "ReadStream" >> beam.ParDo(self._read))


class ReadTableStreams(_ReadStreams):
    """pbegin -> pyarrow RecordBatches of `table`'s `columns`, for rows matching
    `row_restriction` (a BigQuery SQL filter), read in parallel streams."""

    def __init__(self, target, table: Table, columns: list[str], row_restriction: str = "",
                 max_streams: int = 0):
        super().__init__(target, _OpenSession(target, table.name, tuple(columns),
                                              row_restriction, max_streams or DEFAULT_MAX_STREAMS))


class ReadQueryStreams(_ReadStreams):
    """pbegin -> pyarrow RecordBatches of a parameterised query's result, read in
    parallel streams (for views: the query runs once, when the pipeline does)."""

    def __init__(self, target, sql: str, params: list[tuple] = (), max_streams: int = 0):
        super().__init__(target, _OpenSession(target, None, (), "",
                                              max_streams or DEFAULT_MAX_STREAMS,
                                              (sql, list(params))))


def arrow_rows(batch) -> list[dict]:
    """A record batch as row dicts: NUMERIC and BIGNUMERIC as Decimal, TIMESTAMP as datetime."""
    return batch.to_pylist()


def query_frame(target, sql: str, params: list[tuple] = ()):
    """A query's result as a pandas DataFrame read over the Storage Read API, exactly:
    NUMERIC and BIGNUMERIC columns stay Arrow decimals (`pd.ArrowDtype`), never float64."""
    import pandas as pd

    table = (target.client().query(sql, job_config=query_config(params)).result()
             .to_arrow(bqstorage_client=target.read_client()))
    return table.to_pandas(types_mapper=pd.ArrowDtype)
