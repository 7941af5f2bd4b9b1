"""BigQuery sinks that behave the same on BigQuery and on the emulator (reads: storage_read).

Beam's `WriteToBigQuery`/`ReadFromBigQuery` cannot be pointed at an
emulator, so the default path uses the `google-cloud-bigquery` client, whose
endpoint is configurable: `WriteRows` sends batches through the streaming
insert API (`insertAll`) with a deterministic insert id per row, so a retried
bundle or a redelivered message cannot add a row twice (BigQuery and
local-bigquery drop a repeated insert id). On Dataflow, `--bigquery_write_method
STORAGE_WRITE_API` or `STREAMING_INSERTS` uses Beam's own connector instead.
"""
from __future__ import annotations

import json
import random
import re
import time
import typing

import apache_beam as beam
from apache_beam.io.gcp.bigquery_tools import RetryStrategy
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from schemas.tables import FAILED_WRITES, Table
from transforms.bigquery_target import BigQueryTarget
from transforms.rows import UnwritableRow, failed_write_rows
from transforms.rows import row_id as content_id

CLIENT_METHOD = "INSERT_ALL"
BEAM_METHODS = ("STREAMING_INSERTS", "STORAGE_WRITE_API")
WRITE_METHODS = (CLIENT_METHOD,) + BEAM_METHODS
# Bounded writes that a commit step completes (a restatement's staging): the Storage
# Write API's pending streams (`transforms.storage_write`); not a streaming option.
PENDING_METHOD = "PENDING_STREAMS"
MAX_BATCH = 500  # rows per insertAll request (BigQuery's recommendation)
# BigQuery takes at most 10 MB per insertAll request and per row; the request body
# is counted as the client sends it (ASCII JSON), and 2 MB stay free for overhead
# and for BigQuery's own re-encoding. A row alone above this goes to failed_writes.
MAX_REQUEST_BYTES = 8 << 20
BUFFER_SECONDS = 1  # streaming: longest a row waits for its batch to fill
REQUEST_TIMEOUT_SECONDS = 30
FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 0.5, 10.0  # doubling, with jitter
MAX_REASONS = 5  # reasons a Written keeps for an operator
FAILED = "failed"


class ExpansionServiceUnavailable(RuntimeError):
    """A Beam cross-language write (STORAGE_WRITE_API) cannot be built: no Java
    expansion service (its jar is downloaded from Maven on first use)."""


class Written(typing.NamedTuple):
    """What a write did: rows written, and rows given up (recorded in `failed_writes`)
    with the first few reasons, for an operator; with PENDING_STREAMS, the pending
    streams that hold the rows until the commit step commits them."""

    rows: int = 0
    failed: int = 0
    reasons: tuple = ()
    streams: tuple = ()


def total_written(parts: typing.Iterable[Written]) -> Written:
    rows = failed = 0
    reasons: tuple = ()
    streams: list = []
    for part in parts:
        rows, failed = rows + part.rows, failed + part.failed
        reasons = (reasons + tuple(part.reasons))[:MAX_REASONS]
        streams += part.streams
    return Written(rows, failed, reasons, tuple(streams))


def encoded_size(row_id: str, row: dict) -> int:
    """Bytes the row adds to an insertAll request body (the client sends ASCII JSON)."""
    return len(json.dumps({"insertId": row_id, "json": row})) + 2


def plan_requests(keyed_rows: list, max_rows: int = MAX_BATCH,
                  max_bytes: int = MAX_REQUEST_BYTES) -> tuple[list[list], list]:
    """(row_id, row) pairs -> (requests within both bounds, rows too large for any)."""
    requests, current, size, too_large = [], [], 0, []
    for row_id, row in keyed_rows:
        n = encoded_size(row_id, row)
        if n > max_bytes:
            too_large.append((row_id, row, n))
            continue
        if current and (len(current) == max_rows or size + n > max_bytes):
            requests.append(current)
            current, size = [], 0
        current.append((row_id, row))
        size += n
    if current:
        requests.append(current)
    return requests, too_large


TRANSIENT, ROWS, TABLE = "transient", "rows", "table"
# Per-row reasons BigQuery reports for rows it did not insert that a retry may insert:
# `stopped` rows were only held back by an invalid row of the same request.
RETRY_ROW_REASONS = frozenset({"stopped", "timeout", "backendError", "internalError",
                               "rateLimitExceeded", "quotaExceeded"})
_RATE_REASONS = frozenset({"rateLimitExceeded", "quotaExceeded", "backendError"})


def request_error_kind(error: BaseException) -> str:
    """How a failed insertAll call is handled: TRANSIENT (retry the same request: 5xx,
    429, rate limits, timeouts, connection errors), TABLE (no row can be written there:
    not found, not allowed) or ROWS (400 and anything unknown: a row may be the cause,
    so the request is split until the row is alone)."""
    from google.api_core import exceptions as api

    if isinstance(error, api.GoogleAPICallError):
        code = error.code or 0
        reasons = {e.get("reason") for e in (error.errors or []) if isinstance(e, dict)}
        if code in (408, 429) or code >= 500 or reasons & _RATE_REASONS:
            return TRANSIENT
        return ROWS if code in (400, 413) else TABLE
    import requests
    from google.auth.exceptions import TransportError

    if isinstance(error, (OSError, requests.exceptions.RequestException, TransportError)):
        return TRANSIENT
    return ROWS


class TransientWriteError(RuntimeError):
    """BigQuery kept failing transiently past the retry budget: the bundle fails and the
    runner retries it (the insert ids make that idempotent); no row is given up."""


class _InsertBatch(beam.DoFn):
    """Batches of (row_id, row) -> Written per batch; rows BigQuery can never accept on
    the FAILED output as `failed_writes` rows. With `strict` (the failed-writes table
    itself) a permanent failure raises: there is nowhere further to put the row."""

    def __init__(self, target: BigQueryTarget, table: Table, strict: bool = False):
        self._target = target
        self._table = table
        self._strict = strict
        self._client = None
        self._retries = Metrics.counter("tallyflow.bigquery", "insert_retries")

    def setup(self):
        self._client = self._target.client()

    def process(self, batch):
        requests, too_large = plan_requests(list(batch))
        failed = [(row_id, row, "ROW_TOO_LARGE",
                   f"the row is {size} bytes as JSON; insertAll takes at most "
                   f"{MAX_REQUEST_BYTES} bytes per request here (BigQuery: 10 MB)")
                  for row_id, row, size in too_large]
        written = 0
        for request in requests:
            done, given_up = self._insert(request)
            written += done
            failed += given_up
        yield from self._give_up(failed)
        yield Written(rows=written)

    def _insert(self, request: list) -> tuple[int, list]:
        """Writes one request, retrying what may succeed; -> (rows written, rows given up)."""
        table_id = self._target.table_id(self._table)
        pending, written, failed = request, 0, []
        deadline = time.monotonic() + self._target.retry_seconds
        delay = FIRST_BACKOFF_SECONDS
        while pending:
            try:
                errors = self._client.insert_rows_json(
                    table_id, [row for _, row in pending],
                    row_ids=[row_id for row_id, _ in pending], timeout=REQUEST_TIMEOUT_SECONDS)
            except Exception as error:  # noqa: BLE001 - classified, never lost
                kind = request_error_kind(error)
                reason = f"{type(error).__name__}: {error}"
                if kind == TRANSIENT:
                    delay = self._back_off(deadline, delay, reason)
                    continue
                if kind == ROWS and len(pending) > 1:
                    half = len(pending) // 2
                    for part in (pending[:half], pending[half:]):
                        done, given_up = self._insert(part)
                        written, failed = written + done, failed + given_up
                    return written, failed
                return written, failed + [(row_id, row, "REQUEST_REJECTED", reason)
                                          for row_id, row in pending]
            invalid, retry = row_outcomes(errors, len(pending))
            written += len(pending) - len(invalid) - len(retry)
            failed += [(*pending[i], "ROW_INVALID", reason) for i, reason in invalid.items()]
            pending = [pending[i] for i in retry]
            if pending and not invalid:  # rows held back for their own sake: wait
                delay = self._back_off(deadline, delay, f"row errors: {errors[:3]}")
        return written, failed

    def _back_off(self, deadline: float, delay: float, reason: str) -> float:
        if time.monotonic() + delay > deadline:
            raise TransientWriteError(
                f"insert into {self._table.name} kept failing for "
                f"{self._target.retry_seconds:g} s: {reason[:500]}")
        self._retries.inc()
        time.sleep(delay * random.uniform(0.5, 1.0))
        return min(delay * 2, MAX_BACKOFF_SECONDS)

    def _give_up(self, failed: list):
        if failed and self._strict:
            raise RuntimeError(f"{len(failed)} rows could not be written to "
                               f"{self._table.name}: {failed[0][3][:500]}")
        now = time.time_ns()
        for row_id, row, code, reason in failed:
            yield given_up(self._table.name, row_id, row, code, reason, now)


def given_up(table_name: str, row_id: str, row: dict, code: str, reason: str,
             failed_ns: int) -> beam.pvalue.TaggedOutput:
    """A row given up, on the FAILED output as (reason, its `failed_writes` rows), counted
    by `failed_writes` and `failed_writes.<table>` (namespace tallyflow.bigquery)."""
    Metrics.counter("tallyflow.bigquery", "failed_writes").inc()
    Metrics.counter("tallyflow.bigquery", f"failed_writes.{table_name}").inc()
    return beam.pvalue.TaggedOutput(FAILED, (reason, failed_write_rows(
        table_name, row_id, row, code, reason, failed_ns)))


def row_outcomes(errors: list, count: int) -> tuple[dict[int, str], list[int]]:
    """insertAll's per-row errors -> ({index: reason} never insertable, [indexes to
    retry]). Rows without an error entry were inserted."""
    invalid, retry = {}, []
    for entry in errors:
        index = entry.get("index")
        if not isinstance(index, int) or not 0 <= index < count or index in invalid:
            continue
        problems = entry.get("errors") or [{}]
        if all(p.get("reason") in RETRY_ROW_REASONS for p in problems):
            if index not in retry:
                retry.append(index)
        else:
            invalid[index] = "; ".join(
                f"{p.get('reason') or 'error'}"
                + (f" at {p['location']}" if p.get("location") else "")
                + (f": {p['message']}" if p.get("message") else "")
                for p in problems if p.get("reason") not in RETRY_ROW_REASONS)
    if errors and not invalid and not retry:  # errors that name no row: send them all again
        return {}, list(range(count))
    return invalid, [i for i in retry if i not in invalid]


def beam_failure(table_name: str, failure, failed_ns: int) -> tuple[str, list]:
    """A failed row of Beam's WriteToBigQuery ((destination, row, errors) from streaming
    inserts, {error_message, failed_row} from the Storage Write API) -> what _Recorded
    takes; Beam's own insert ids are not exposed, so the row's content names it."""
    if isinstance(failure, dict):
        row, reason = failure.get("failed_row"), str(failure.get("error_message"))
    else:
        row, reason = failure[1], json.dumps(failure[2], default=str)[:10_000]
    failed_id = content_id("beam", json.dumps(row, sort_keys=True, default=str))
    return reason, failed_write_rows(table_name, failed_id, row, "ROW_INVALID", reason,
                                     failed_ns)


class _BuildRows(beam.DoFn):
    """Elements -> (row_id, row); a row no column can hold goes to FAILED instead."""

    def __init__(self, to_row, table: Table):
        self._to_row = to_row
        self._table = table

    def process(self, element):
        try:
            yield self._to_row(element)
        except UnwritableRow as unwritable:
            yield given_up(self._table.name, unwritable.row_id, unwritable.row,
                           unwritable.code, unwritable.reason, time.time_ns())


class _Recorded(beam.DoFn):
    """(reason, failed_writes rows) of one given-up row -> the rows, and, once they are
    written, Written(failed=1) so a commit that waits for the writes sees it."""

    def process(self, failure):
        reason, failed_rows = failure
        yield from failed_rows
        yield beam.pvalue.TaggedOutput(FAILED, Written(failed=1, reasons=(reason,)))


class WriteRows(beam.PTransform):
    """(row_id, row dict) -> rows in `table`, at most once per row_id; outputs Written
    per batch (INSERT_ALL), so later steps can wait for the writes and see failures.

    With `to_row`, elements are built into (row_id, row) here, so a row that cannot
    be stored (rows.UnwritableRow) is recorded too. Transient errors are retried with
    backoff and the same insert ids; a row BigQuery can never accept (invalid, too
    large, a request rejected for it) goes to `failed_writes` with the reason and
    the whole row, and the rest of its batch lands. Requests are bounded by rows
    (MAX_BATCH) and by bytes (MAX_REQUEST_BYTES).

    With a Beam method, the rows go through `beam.io.WriteToBigQuery` instead
    (Dataflow); row ids are then Beam's own. With PENDING_METHOD (bounded input
    only) each bundle's rows go to a pending stream, named in its Written, and
    nothing is visible until the commit step commits the streams
    (`storage_write.commit_streams`); the row id is then unused.
    """

    def __init__(self, target: BigQueryTarget, table: Table, method: str = CLIENT_METHOD,
                 to_row=None):
        super().__init__()
        if method not in WRITE_METHODS + (PENDING_METHOD,):
            raise ValueError(f"write method must be one of {', '.join(WRITE_METHODS)}")
        self._target = target
        self._table = table
        self._method = method
        self._to_row = to_row

    def expand(self, elements):
        failures = []
        keyed_rows = elements
        if self._to_row is not None:
            built = elements | "BuildRows" >> beam.ParDo(
                _BuildRows(self._to_row, self._table)).with_outputs(FAILED, main="rows")
            keyed_rows = built.rows
            failures.append(built[FAILED])
        if self._method in BEAM_METHODS:
            written = self._beam_write(keyed_rows)
            if self._table.name == FAILED_WRITES.name:  # nowhere further to put them
                return written
            table = self._table.name
            failures.append(written.failed_rows_with_errors | "BeamFailures" >> beam.Map(
                lambda failure: beam_failure(table, failure, time.time_ns())))
        else:
            inserted = self._client_write(keyed_rows)
            written = inserted.written
            failures.append(inserted[FAILED])
        recorded = ((failures | "Failures" >> beam.Flatten()) if len(failures) > 1
                    else failures[0]) | "FailedWriteRows" >> beam.ParDo(
                        _Recorded()).with_outputs(FAILED, main="rows")
        if self._method in BEAM_METHODS:
            _ = recorded.rows | "WriteFailed" >> WriteRows(self._target, FAILED_WRITES,
                                                            self._method)
            return written
        stored = (self._batches(recorded.rows, "BatchFailed")
                  | "InsertFailed" >> beam.ParDo(_InsertBatch(self._target, FAILED_WRITES,
                                                              strict=True))
                  | "NotTheTablesRows" >> beam.Map(lambda _written: Written()))
        # what waits for this output (a commit) also waits for failed_writes to be written
        return (written, stored, recorded[FAILED]) | "Written" >> beam.Flatten()

    def _client_write(self, keyed_rows):
        """-> (Written, FAILED) outputs of the INSERT_ALL or PENDING_METHOD write."""
        if self._method != PENDING_METHOD:
            return self._batches(keyed_rows, "Batch") | "InsertAll" >> beam.ParDo(
                _InsertBatch(self._target, self._table)).with_outputs(FAILED, main="written")
        if not keyed_rows.is_bounded:
            raise ValueError(f"{PENDING_METHOD} writes bounded input only")
        from transforms.storage_write import AppendPending

        return keyed_rows | "AppendPending" >> beam.ParDo(AppendPending(
            self._target, self._table)).with_outputs(FAILED, main="written")

    def _batches(self, keyed_rows, name: str):
        if keyed_rows.is_bounded:
            return keyed_rows | name >> beam.BatchElements(min_batch_size=1,
                                                            max_batch_size=MAX_BATCH)
        # Streaming bundles are small (the DirectRunner hands a stateful DoFn's
        # output over one key at a time), and one insertAll costs ~0.3 s on the
        # emulator and a quota unit on BigQuery: buffer across bundles instead.
        # Rows carry their own window bounds, so the global window loses nothing.
        table = self._table.name
        return (keyed_rows
                | f"{name}GlobalWindow" >> beam.WindowInto(GlobalWindows())
                | f"{name}KeyByTable" >> beam.Map(lambda row: (table, row)).with_output_types(
                    typing.Tuple[str, typing.Any])
                | name >> beam.GroupIntoBatches.WithShardedKey(
                    MAX_BATCH, max_buffering_duration_secs=BUFFER_SECONDS)
                | f"{name}Unkey" >> beam.Values())

    def _beam_write(self, keyed_rows):
        rows = keyed_rows | "Rows" >> beam.Values()
        try:
            return rows | "WriteToBigQuery" >> beam.io.WriteToBigQuery(
                self._target.table_id(self._table).replace(".", ":", 1),
                schema=self._table.beam_schema(),
                method=self._method,
                **({"insert_retry_strategy": RetryStrategy.RETRY_ON_TRANSIENT_ERROR}
                   if self._method == "STREAMING_INSERTS" else {}),
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


