"""BigQuery writes: transient errors retried idempotently, permanent row errors recorded in
`failed_writes` with the whole row while the rest of the batch lands, requests bounded by
bytes, aggregates beyond their column caught before BigQuery. A fake insertAll client
behaves as BigQuery and the emulator do (per-row `invalid` / `stopped`, whole-request
exceptions)."""
import base64
import json
from decimal import Decimal
from dataclasses import dataclass

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from google.api_core import exceptions as api

from schemas.catalog import parse_catalog
from schemas.events import Limits, Rejection, parse_payload
from schemas.tables import EVENTS, FAILED_WRITES, USAGE_PANES
from schemas.values import format_decimal, parse_rfc3339
from tests.conftest import ALL_AGGREGATIONS
from transforms import bigquery
from transforms.bigquery import (MAX_REQUEST_BYTES, TransientWriteError, WriteRows, Written,
                                 encoded_size, plan_requests, request_error_kind, row_outcomes,
                                 total_written)
from transforms.bigquery_target import BigQueryTarget
from transforms.restate import IncompleteWrite, RecomputeRun, rows_if_complete
from transforms.rows import (PAYLOAD_TEXT_CHARS, UnwritableRow, dead_letter_row, event_row,
                             usage_pane_row)

TABLES: dict[str, "FakeTable"] = {}  # by dataset: shared with DoFns run in this process


class FakeTable:
    """What landed per table, every request's insert ids, and the faults to inject."""

    def __init__(self):
        self.rows: dict[str, dict[str, dict]] = {}
        self.requests: list[tuple[str, list[str]]] = []
        self.transient_failures = 0     # the next N requests raise 503
        self.reject_request_with = None  # a row value that makes the whole request a 400

    def insert(self, table_id, rows, row_ids):
        table = table_id.rsplit(".", 1)[1]
        self.requests.append((table, list(row_ids)))
        if self.transient_failures:
            self.transient_failures -= 1
            raise api.ServiceUnavailable("backend unavailable")
        if self.reject_request_with and any(self.reject_request_with in json.dumps(r)
                                            for r in rows):
            raise api.BadRequest("Request payload is invalid")
        invalid = {i for i, r in enumerate(rows) if r.get("subject") == "poison"}
        if invalid:  # BigQuery: nothing of the request is inserted; valid rows are `stopped`
            return [{"index": i, "errors": [
                {"reason": "invalid", "location": "subject", "message": "poisoned row"}
                if i in invalid else {"reason": "stopped", "location": "", "message": ""}]}
                for i in range(len(rows))]
        for row_id, row in zip(row_ids, rows):
            self.rows.setdefault(table, {}).setdefault(row_id, row)  # insert ids dedup
        return []


class _FakeClient:
    def __init__(self, table: FakeTable):
        self._table = table

    def insert_rows_json(self, table_id, rows, row_ids, timeout=None):
        return self._table.insert(table_id, rows, row_ids)


@dataclass(frozen=True)
class FakeTarget(BigQueryTarget):
    def client(self):
        return _FakeClient(TABLES[self.dataset])


@pytest.fixture
def fake(request, monkeypatch):
    monkeypatch.setattr(bigquery, "FIRST_BACKOFF_SECONDS", 0.001)
    name = f"fake_{len(TABLES)}_{abs(hash(request.node.name))}"
    TABLES[name] = FakeTable()
    yield FakeTarget("fake-project", name, retry_seconds=2), TABLES[name]
    del TABLES[name]


def pane(subject="acme", value="5", n=0):
    return usage_pane_row({"subject": subject, "meter": "bytes_out", "dimensions": "{}",
                           "window_start": "2026-11-01T00:00:00Z",
                           "window_end": "2026-11-01T01:00:00Z", "value": value,
                           "event_count": 1, "fingerprint": "f", "pane_timing": "ON_TIME",
                           "pane_index": n, "is_final": True},
                          False, parse_rfc3339("2026-11-02T00:00:00Z"), "job")


def insert_batch(target, batch, table=USAGE_PANES, strict=False):
    """Runs _InsertBatch on one batch: (Written, [(reason, failed_writes rows)])."""
    dofn = bigquery._InsertBatch(target, table, strict=strict)
    dofn.setup()
    out = list(dofn.process(batch))
    written = [o for o in out if isinstance(o, Written)]
    failed = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    return written[0], failed


def content_of(failed_rows) -> dict:
    parts = sorted(failed_rows, key=lambda r: r[1]["part"])
    assert [r["part"] for _, r in parts] == list(range(parts[0][1]["parts"]))
    return json.loads("".join(r["content"] for _, r in parts))


# ---------------------------------------------------------------- pure parts


def test_requests_are_bounded_by_rows_and_by_bytes():
    small = [pane(n=n) for n in range(1200)]
    requests, too_large = plan_requests(small)
    assert [len(r) for r in requests] == [500, 500, 200] and not too_large
    big = [(f"id{n}", {"blob": "x" * (3 << 20)}) for n in range(5)]
    requests, too_large = plan_requests(big + [(f"huge", {"blob": "y" * (9 << 20)})])
    assert [len(r) for r in requests] == [2, 2, 1]
    assert all(sum(encoded_size(i, r) for i, r in req) <= MAX_REQUEST_BYTES
               for req in requests)
    assert [row_id for row_id, _, _ in too_large] == ["huge"]


def test_encoded_size_is_what_the_client_sends():
    row = {"s": "caf\u00e9 \ud800 \U0001f600 \"q\"\n"}  # escapes make ASCII JSON longer
    assert encoded_size("i", row) == len(json.dumps({"insertId": "i", "json": row})) + 2


@pytest.mark.parametrize("error, kind", [
    (api.ServiceUnavailable("x"), "transient"), (api.InternalServerError("x"), "transient"),
    (api.TooManyRequests("x"), "transient"),
    (api.Forbidden("x", errors=[{"reason": "rateLimitExceeded"}]), "transient"),
    (ConnectionResetError(), "transient"), (TimeoutError(), "transient"),
    (api.BadRequest("x"), "rows"), (TypeError("not JSON serializable"), "rows"),
    (api.NotFound("no table"), "table"), (api.Forbidden("access denied"), "table")])
def test_request_errors_are_classified(error, kind):
    assert request_error_kind(error) == kind


def test_row_outcomes_separate_invalid_from_retryable():
    errors = [{"index": 0, "errors": [{"reason": "stopped"}]},
              {"index": 1, "errors": [{"reason": "invalid", "location": "value",
                                       "message": "bad numeric"}]},
              {"index": 3, "errors": [{"reason": "backendError"}]}]
    invalid, retry = row_outcomes(errors, 4)
    assert invalid == {1: "invalid at value: bad numeric"}
    assert retry == [0, 3]  # row 2 has no error entry: it was inserted
    assert row_outcomes([{"index": -1, "errors": [{"message": "?"}]}], 3) == ({}, [0, 1, 2])


def test_written_totals():
    assert total_written([]) == Written()
    assert total_written([Written(3), Written(failed=1, reasons=("a",)), Written(2)]) == \
        Written(5, 1, ("a",))
    assert rows_if_complete(Written(7)) == 7
    with pytest.raises(IncompleteWrite, match="1 rows could not be written.*a reason"):
        rows_if_complete(Written(7, 1, ("a reason",)))


# ---------------------------------------------------------------- one insert batch


def test_an_invalid_row_is_recorded_whole_and_the_rest_of_the_batch_lands(fake):
    target, table = fake
    batch = [pane(n=n) for n in range(10)]
    poison_id, poison = pane(subject="poison", value="7")
    batch.insert(4, (poison_id, poison))
    written, failed = insert_batch(target, batch)
    assert written == Written(rows=10)
    assert set(table.rows["usage_panes"]) == {row_id for row_id, _ in batch} - {poison_id}
    (reason, failed_rows), = failed
    assert "invalid at subject: poisoned row" in reason
    assert content_of(failed_rows) == poison
    assert {r["table_name"] for _, r in failed_rows} == {"usage_panes"}
    assert {r["row_id"] for _, r in failed_rows} == {poison_id}
    assert {r["error_code"] for _, r in failed_rows} == {"ROW_INVALID"}


def test_transient_errors_are_retried_with_the_same_insert_ids(fake):
    target, table = fake
    table.transient_failures = 3
    batch = [pane(n=n) for n in range(5)]
    written, failed = insert_batch(target, batch)
    assert written == Written(rows=5) and not failed
    assert len(table.requests) == 4
    assert {tuple(ids) for _, ids in table.requests} == {tuple(i for i, _ in batch)}


def test_a_lasting_outage_fails_the_bundle_and_gives_up_no_row(fake):
    target, table = fake
    table.transient_failures = 10 ** 6
    with pytest.raises(TransientWriteError, match="kept failing"):
        insert_batch(target, [pane()])
    assert "usage_panes" not in table.rows


def test_a_request_rejected_for_one_row_is_split_until_the_row_is_alone(fake):
    target, table = fake
    table.reject_request_with = "reject-me"
    batch = [pane(n=n) for n in range(16)]
    bad_id, bad = pane(subject="reject-me")
    batch.insert(9, (bad_id, bad))
    written, failed = insert_batch(target, batch)
    assert written == Written(rows=16)
    assert set(table.rows["usage_panes"]) == {i for i, _ in batch} - {bad_id}
    (reason, failed_rows), = failed
    assert reason.startswith("BadRequest") and content_of(failed_rows) == bad
    assert {r["error_code"] for _, r in failed_rows} == {"REQUEST_REJECTED"}


def test_a_row_over_the_size_limit_is_recorded_in_parts(fake):
    target, table = fake
    payload = ("\u00e9\"" * (3 << 20))  # 6 M characters, far more once escaped
    rejection = Rejection("MALFORMED_JSON", "broken", payload, "m-1", attributes={})
    big_id, big = dead_letter_row(rejection, "streaming_usage", "job")
    assert big["payload"].startswith(payload[:PAYLOAD_TEXT_CHARS]) and "clipped" in big["payload"]
    written, failed = insert_batch(target, [pane(), (big_id, big)])
    assert written == Written(rows=1)
    (reason, failed_rows), = failed
    assert "ROW_TOO_LARGE" == failed_rows[0][1]["error_code"] and "bytes" in reason
    assert len(failed_rows) > 1 and content_of(failed_rows) == big
    assert all(encoded_size(i, r) < MAX_REQUEST_BYTES for i, r in failed_rows)


def test_a_dead_letter_stores_its_payload_once_unless_the_text_is_not_it():
    text = Rejection("MALFORMED_JSON", "broken", '{"a": "\u00e9', "m-1", attributes={})
    row = dead_letter_row(text, "streaming_usage", "job")[1]
    assert row["payload"] == '{"a": "\u00e9' and row["payload_bytes"] is None
    raw = b'{"a": "\xe9'  # Latin-1, not UTF-8: the text shows U+FFFD, the bytes are kept
    latin = text._replace(payload='{"a": "\ufffd', payload_bytes=raw)
    row = dead_letter_row(latin, "streaming_usage", "job")[1]
    assert row["payload"] == '{"a": "\ufffd' and base64.b64decode(row["payload_bytes"]) == raw
    big = text._replace(payload="x" * (PAYLOAD_TEXT_CHARS + 1))
    row = dead_letter_row(big, "streaming_usage", "job")[1]
    assert base64.b64decode(row["payload_bytes"]) == b"x" * (PAYLOAD_TEXT_CHARS + 1)


def test_an_event_row_stores_the_event_once_in_its_columns():
    data = '{"region":"eu","amount":1.50,"user":"u"}'
    (event,) = parse_payload(b'{"specversion":"1.0","id":"e1","source":"s","type":"call",'
                             b'"subject":"c","time":"2026-11-02T09:00:00Z","data":%s}'
                             % data.encode(), "m-1", (), parse_catalog(ALL_AGGREGATIONS),
                             Limits(now_ns=None), parse_rfc3339("2026-11-02T09:00:01Z"))
    row = event_row(event, "job")[1]
    assert list(row) == EVENTS.column_names()
    assert row["raw"] == event.raw and f'"data":{data}' in row["raw"]


def test_the_failed_writes_table_itself_never_gives_up_silently(fake):
    target, _ = fake
    with pytest.raises(RuntimeError, match="could not be written to failed_writes"):
        insert_batch(target, [pane(subject="poison")], table=FAILED_WRITES, strict=True)


# ---------------------------------------------------------------- aggregates beyond NUMERIC


def test_an_aggregate_beyond_numeric_is_caught_naming_meter_and_window():
    too_big = format_decimal(sum([Decimal("9" * 29)] * 20))  # twenty valid NUMERIC values
    with pytest.raises(UnwritableRow) as caught:
        pane(value=too_big)
    reason = caught.value.reason
    assert "'bytes_out'" in reason and "2026-11-01T00:00:00Z .. 2026-11-01T01:00:00Z" in reason
    assert "precision: BIGNUMERIC" in reason and caught.value.code == "VALUE_OUT_OF_RANGE"
    assert caught.value.row["value"] == too_big
    run = RecomputeRun("run-1", 0, 3600 * 10 ** 9, 3600 * 10 ** 9, "r", 0)
    usage = {"subject": "acme", "meter": "bytes_out", "dimensions": "{}",
             "window_start": "2026-11-01T00:00:00Z", "window_end": "2026-11-01T01:00:00Z",
             "value": too_big, "event_count": 20, "fingerprint": "f"}
    with pytest.raises(UnwritableRow, match="precision: BIGNUMERIC"):
        run.row(usage, bignumeric=False)
    assert run.row(usage, bignumeric=True)[1]["value_bignumeric"] == too_big


# ---------------------------------------------------------------- the whole write


def test_write_rows_lands_the_good_rows_and_records_the_rest(fake):
    """One overflowing aggregate (caught where the row is built) and one row BigQuery
    refuses: both in failed_writes with their whole rows, counted; the rest lands."""
    target, table = fake
    usages = [{"subject": s, "value": v, "n": n} for n, (s, v) in enumerate(
        [("acme", "1"), ("acme", "1" + "0" * 30), ("poison", "2")] + [("acme", "3")] * 20)]

    def to_row(u):
        return pane(subject=u["subject"], value=u["value"], n=u["n"])

    p = TestPipeline()
    written = (p | beam.Create(usages)
               | WriteRows(target, USAGE_PANES, to_row=to_row)
               | beam.CombineGlobally(total_written)
               | beam.Map(lambda w: (w.rows, w.failed, len(w.reasons))))
    assert_that(written, equal_to([(21, 2, 2)]))
    result = p.run()
    result.wait_until_finish()
    landed = {r["pane_index"] for r in table.rows["usage_panes"].values()}
    assert landed == set(range(23)) - {1, 2}
    failed = table.rows["failed_writes"].values()
    assert {(r["error_code"], json.loads(r["content"])["pane_index"]) for r in failed} == \
        {("VALUE_OUT_OF_RANGE", 1), ("ROW_INVALID", 2)}
    counters = {}
    for c in result.metrics().query()["counters"]:  # summed over steps
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
    assert counters["failed_writes"] == counters["failed_writes.usage_panes"] == 2


def test_write_rows_does_not_stall_on_a_row_bigquery_refuses(fake):
    """(row_id, row) pairs as before: an invalid row used to be retried until the bundle
    failed."""
    target, table = fake
    rows = [pane(n=n) for n in range(5)] + [pane(subject="poison", n=9)]
    with TestPipeline() as p:
        _ = p | beam.Create(rows) | WriteRows(target, USAGE_PANES)
    assert len(table.rows["usage_panes"]) == 5
    assert [json.loads(r["content"])["subject"]
            for r in table.rows["failed_writes"].values()] == ["poison"]


def test_streaming_writes_keep_going_past_a_refused_row(fake):
    """The unbounded path (batches buffered across bundles) records and moves on."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream

    target, table = fake
    rows = [pane(n=n) for n in range(6)]
    poison = pane(subject="poison", n=99)
    stream = (TestStream().add_elements(rows[:3]).add_elements([poison])
              .advance_processing_time(5).add_elements(rows[3:])
              .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as p:
        _ = p | stream | WriteRows(target, USAGE_PANES)
    assert set(table.rows["usage_panes"]) == {i for i, _ in rows}
    assert [json.loads(r["content"]) for r in table.rows["failed_writes"].values()] == \
        [poison[1]]


def test_rows_beam_reports_failed_are_recorded_whole():
    row = {"subject": "acme", "value": "1" + "0" * 40}
    for failure in (("p:d.usage_panes", row, [{"reason": "invalid", "message": "numeric"}]),
                    {"failed_row": row, "error_message": "numeric out of range"}):
        reason, failed_rows = bigquery.beam_failure("usage_panes", failure, 0)
        assert "numeric" in reason and content_of(failed_rows) == row
        assert {r["error_code"] for _, r in failed_rows} == {"ROW_INVALID"}
