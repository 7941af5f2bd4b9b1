"""Staging a restatement over the Storage Write API in pending mode.

Each bundle appends its rows to a pending stream of its own, in requests
bounded by bytes (MAX_APPEND_BYTES), finalizes the stream when
the bundle ends and outputs its name. Rows in a pending stream are invisible
until a batch commit, which the run's commit step does once every write is
done (`commit_streams`), before its transaction. A bundle that fails and is
retried leaves an uncommitted stream behind and writes a new one: the runner
drops the failed attempt's output, so its stream is never committed and no row
is staged twice. Memory holds one request per bundle, not the bundle.

Same code on BigQuery and on the local emulator (only the gRPC endpoint
differs); the choice over insertAll, with figures, is in docs/deploy.md.
"""
from __future__ import annotations

import functools
import time

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MAX_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from schemas.tables import Table
from schemas.values import parse_rfc3339
from transforms.bigquery import Written, given_up


@functools.lru_cache(maxsize=4096)  # a run's rows share few window bounds
def _micros(text: str) -> int:
    return parse_rfc3339(text) // 1000


# BigQuery types -> (proto field type, how a staging row's JSON value is sent).
# NUMERIC/BIGNUMERIC go as decimal strings (exact); TIMESTAMP as epoch microseconds.
_PROTO_TYPES = {
    "STRING": ("TYPE_STRING", str), "NUMERIC": ("TYPE_STRING", str),
    "BIGNUMERIC": ("TYPE_STRING", str), "INT64": ("TYPE_INT64", int),
    "BOOL": ("TYPE_BOOL", bool),
    "TIMESTAMP": ("TYPE_INT64", _micros),
}
COMMIT_CHUNK = 1000  # streams per BatchCommitWriteStreams call
# Bytes of rows per AppendRows request: BigQuery takes 10 MB, the emulator's gRPC
# server 4 MiB (its default receive limit); the rest is room for the schema.
MAX_APPEND_BYTES = 3 << 20


def write_client(endpoint: str | None):
    """A Storage Write client: BigQuery's own, or an emulator's gRPC `host:port`."""
    from google.cloud import bigquery_storage_v1

    if not endpoint:
        return bigquery_storage_v1.BigQueryWriteClient()
    import grpc
    from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
        BigQueryWriteGrpcTransport)

    return bigquery_storage_v1.BigQueryWriteClient(
        transport=BigQueryWriteGrpcTransport(channel=grpc.insecure_channel(endpoint)))


def row_descriptor(table: Table):
    """The table's columns as a self-contained proto2 DescriptorProto (all optional:
    BigQuery itself enforces REQUIRED)."""
    from google.protobuf import descriptor_pb2

    message = descriptor_pb2.DescriptorProto(name="StagedRow")
    for number, column in enumerate(table.columns, start=1):
        message.field.add(name=column.name, number=number,
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                          type=getattr(descriptor_pb2.FieldDescriptorProto,
                                       _PROTO_TYPES[column.type][0]))
    return message


def row_encoder(table: Table):
    """row dict (as WriteRows takes it) -> serialized proto bytes; None stays unset."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="staged_row.proto", package="tallyflow")
    file.message_type.add().CopyFrom(row_descriptor(table))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    message = message_factory.GetMessageClass(pool.FindMessageTypeByName("tallyflow.StagedRow"))
    convert = {c.name: _PROTO_TYPES[c.type][1] for c in table.columns}

    def encode(row: dict) -> bytes:
        return message(**{name: convert[name](value) for name, value in row.items()
                          if value is not None}).SerializeToString()
    return encode


class PendingStreamError(RuntimeError):
    """An append, finalize or commit failed: the bundle (or commit) is retried whole."""


class AppendPending(beam.DoFn):
    """(row_id, row) -> nothing per row; at the end of the bundle Written(rows,
    streams=(its finalized pending stream,)). Rows rejected by BigQuery, or too large
    for a request, go to FAILED as `failed_writes` rows, as with insertAll."""

    def __init__(self, target, table: Table):
        self._target = target
        self._table = table

    def setup(self):
        self._client = self._target.write_client()
        self._encode = row_encoder(self._table)
        self._path = (f"projects/{self._target.project}/datasets/{self._target.dataset}"
                      f"/tables/{self._table.name}")

    def start_bundle(self):
        self._stream, self._offset, self._failed = None, 0, []
        self._request, self._size = [], 0

    def process(self, keyed_row):
        row_id, row = keyed_row
        data = self._encode(row)
        if len(data) > MAX_APPEND_BYTES:
            yield given_up(self._table.name, row_id, row, "ROW_TOO_LARGE",
                           f"the row is {len(data)} bytes; a request takes at most "
                           f"{MAX_APPEND_BYTES}", time.time_ns())
            return
        if self._size + len(data) > MAX_APPEND_BYTES:
            self._append()
        self._request.append((row_id, row, data))
        self._size += len(data)
        yield from self._given_up()

    def finish_bundle(self):
        if self._request:
            self._append()
        for failure in self._given_up():
            yield beam.pvalue.TaggedOutput(failure.tag, _global(failure.value))
        if self._stream is None:
            return
        self._call("finalize", self._client.finalize_write_stream, name=self._stream)
        yield _global(Written(rows=self._offset, streams=(self._stream,)))

    def _given_up(self):
        failed, self._failed = self._failed, []
        now = time.time_ns()
        for row_id, row, reason in failed:
            yield given_up(self._table.name, row_id, row, "ROW_INVALID", reason, now)

    def _append(self):
        """Sends the buffered rows at the stream's offset; rows BigQuery names as invalid
        are given up and the rest sent again (the request landed all or nothing)."""
        from google.cloud.bigquery_storage_v1 import types

        if self._stream is None:
            self._stream = self._call("create", self._client.create_write_stream,
                                      parent=self._path, write_stream=types.WriteStream(
                                          type_=types.WriteStream.Type.PENDING)).name
        pending, self._request, self._size = self._request, [], 0
        while pending:
            request = types.AppendRowsRequest(
                write_stream=self._stream, offset=self._offset,
                proto_rows=types.AppendRowsRequest.ProtoData(
                    writer_schema=types.ProtoSchema(proto_descriptor=row_descriptor(self._table)),
                    rows=types.ProtoRows(serialized_rows=[data for _, _, data in pending])))
            # the routing header BigQuery needs on AppendRows (as the client's own
            # writer.AppendRowsStream sends it)
            routing = (("x-goog-request-params", f"write_stream={self._stream}"),)
            (response,) = self._call("append", lambda: list(self._client.append_rows(
                iter([request]), metadata=routing)))
            invalid = {e.index: e.message for e in response.row_errors
                       if 0 <= e.index < len(pending)}
            if response.error.code and not invalid:
                raise PendingStreamError(f"append to {self._stream}: {response.error.message}")
            if not invalid:
                self._offset += len(pending)
                return
            self._failed += [(row_id, row, invalid[i]) for i, (row_id, row, _) in
                             enumerate(pending) if i in invalid]
            pending = [p for i, p in enumerate(pending) if i not in invalid]

    def _call(self, what: str, method, **kwargs):
        try:
            return method(**kwargs)
        except Exception as error:  # noqa: BLE001 - the bundle is retried, on a new stream
            raise PendingStreamError(f"{what} on {self._table.name}: "
                                     f"{type(error).__name__}: {error}") from error


def _global(value) -> WindowedValue:
    return WindowedValue(value, MAX_TIMESTAMP - 1, [GlobalWindow()])


def commit_streams(client, streams: tuple[str, ...]) -> None:
    """Makes the rows of finalized pending streams visible. Idempotent: a stream that is
    already committed (a retried commit step) is accepted; any other refusal raises."""
    from google.cloud.bigquery_storage_v1 import types

    by_table: dict[str, list[str]] = {}
    for name in streams:
        by_table.setdefault(name.split("/streams/")[0], []).append(name)
    for table, names in by_table.items():
        for i in range(0, len(names), COMMIT_CHUNK):
            chunk = names[i:i + COMMIT_CHUNK]
            for _ in range(2):  # a chunk commits all or nothing: again without the committed
                response = client.batch_commit_write_streams(
                    types.BatchCommitWriteStreamsRequest(parent=table, write_streams=chunk))
                if not response.stream_errors:
                    break
                chunk = [n for n in chunk if not client.get_write_stream(name=n).commit_time]
                if not chunk:
                    break
            else:
                raise PendingStreamError(
                    f"{len(chunk)} pending streams of {table} were not committed: "
                    f"{response.stream_errors[0].error_message}")
