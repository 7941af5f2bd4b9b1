"""Pending Storage Write streams (transforms/storage_write.py) against a fake write client:
row encoding, requests bounded by bytes, rows BigQuery rejects, idempotent commits.
The same code against the emulator: tests/e2e/test_storage_write.py."""
from decimal import Decimal
from types import SimpleNamespace

import pytest

from schemas.tables import USAGE_RECOMPUTED
from schemas.values import parse_rfc3339
from transforms import storage_write
from transforms.bigquery import FAILED, Written, total_written
from transforms.bigquery_target import BigQueryTarget
from transforms.restate import RecomputeRun, commit_pending_streams

HOUR = 3600 * 10 ** 9
RUN = RecomputeRun("run-1", 0, HOUR, HOUR, "test", 1_700_000_000_123_456_789)


def usage_row(n: int, value: str = "1") -> tuple[str, dict]:
    return RUN.row({"subject": f"c{n}", "meter": "tokens", "dimensions": "{}",
                    "window_start": "2026-11-01T00:00:00.000001Z",
                    "window_end": "2026-11-01T01:00:00Z", "event_count": n,
                    "fingerprint": f"{n:032x}", "value": value}, False)


def decode(data: bytes) -> dict:
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t")
    file.message_type.add().CopyFrom(storage_write.row_descriptor(USAGE_RECOMPUTED))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    message = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.StagedRow"))
    return json_format.MessageToDict(message.FromString(data),
                                     preserving_proto_field_name=True)


def test_a_row_is_encoded_exactly_and_nulls_stay_unset():
    _, row = usage_row(7, "12345678901234567890.123456789")
    fields = decode(storage_write.row_encoder(USAGE_RECOMPUTED)(row))
    assert fields["value"] == "12345678901234567890.123456789"
    assert Decimal(fields["value"]) == Decimal(row["value"])
    assert "value_bignumeric" not in fields and row["value_bignumeric"] is None
    # TIMESTAMP as epoch microseconds, the microsecond kept
    assert int(fields["window_start"]) * 1000 == parse_rfc3339("2026-11-01T00:00:00.000001Z")
    assert int(fields["event_count"]) == 7 and int(fields["revision"]) == 0
    assert set(fields) | {"value_bignumeric"} == set(USAGE_RECOMPUTED.column_names())


class FakeWriteClient:
    """Records appends; rejects rows whose subject is in `invalid` (the whole request
    fails, naming them, as BigQuery does) and commits streams once."""

    def __init__(self, invalid=()):
        self.invalid = set(invalid)
        self.requests, self.finalized, self.committed = [], [], {}
        self.created = 0

    def create_write_stream(self, parent, write_stream):
        self.created += 1
        return SimpleNamespace(name=f"{parent}/streams/s{self.created}")

    def append_rows(self, requests, metadata=()):
        (request,) = list(requests)
        assert metadata == (("x-goog-request-params", f"write_stream={request.write_stream}"),)
        rows = [decode(data) for data in request.proto_rows.rows.serialized_rows]
        bad = [i for i, r in enumerate(rows) if r["subject"] in self.invalid]
        if bad:
            yield SimpleNamespace(error=SimpleNamespace(code=3, message="invalid"),
                                  row_errors=[SimpleNamespace(index=i, message=f"bad row {i}")
                                              for i in bad])
            return
        self.requests.append((request.write_stream, request.offset, rows))
        yield SimpleNamespace(error=SimpleNamespace(code=0, message=""), row_errors=[])

    def finalize_write_stream(self, name):
        self.finalized.append(name)

    def batch_commit_write_streams(self, request):
        errors = [SimpleNamespace(entity=n, error_message="already committed")
                  for n in request.write_streams if n in self.committed]
        if not errors:
            self.committed.update({n: True for n in request.write_streams})
        return SimpleNamespace(stream_errors=errors)

    def get_write_stream(self, name):
        return SimpleNamespace(commit_time=self.committed.get(name))


class Target(BigQueryTarget):
    def write_client(self):
        return self.fake


def one_bundle(target, table, rows) -> tuple[list, list]:
    """`rows` through AppendPending as one bundle, called as a runner calls it:
    (its Written outputs, the (reason, failed_writes rows) it gave up)."""
    fn = storage_write.AppendPending(target, table)
    fn.setup()
    fn.start_bundle()
    outputs = [out for row in rows for out in fn.process(row)] + list(fn.finish_bundle())
    written = [o.value for o in outputs if not hasattr(o, "tag")]
    failed = [getattr(o.value, "value", o.value) for o in outputs
              if getattr(o, "tag", None) == FAILED]
    return written, failed


def bundle(fake, rows):
    return one_bundle(fake_target(fake), USAGE_RECOMPUTED, rows)


def fake_target(fake) -> Target:
    target = Target("tallyflow-test", "metering")
    object.__setattr__(target, "fake", fake)
    return target


def test_a_bundle_is_one_stream_in_requests_bounded_by_bytes(monkeypatch):
    rows = [usage_row(n) for n in range(40)]
    size = len(storage_write.row_encoder(USAGE_RECOMPUTED)(rows[0][1]))
    monkeypatch.setattr(storage_write, "MAX_APPEND_BYTES", 10 * size + size // 2)
    fake = FakeWriteClient()
    written, failed = bundle(fake, rows)
    assert not failed
    (stream,) = {name for name, _, _ in fake.requests}
    assert written == [Written(rows=40, streams=(stream,))] and fake.finalized == [stream]
    assert [len(r) for _, _, r in fake.requests] == [10, 10, 10, 10]
    assert [offset for _, offset, _ in fake.requests] == [0, 10, 20, 30]
    assert [r["subject"] for _, _, request in fake.requests for r in request] == \
        [row["subject"] for _, row in rows]


def test_rows_bigquery_rejects_are_given_up_and_the_rest_land_once():
    rows = [usage_row(n) for n in range(6)]
    fake = FakeWriteClient(invalid={"c1", "c4"})
    written, failed = bundle(fake, rows)
    assert written[0].rows == 4
    assert [r["subject"] for _, _, request in fake.requests for r in request] == \
        ["c0", "c2", "c3", "c5"]
    recorded = [parts[0][1] for _, parts in failed]  # (reason, failed_writes rows)
    assert sorted(r["reason"] for r in recorded) == ["bad row 1", "bad row 4"]
    assert {r["row_id"] for r in recorded} == {rows[1][0], rows[4][0]}
    assert {r["error_code"] for r in recorded} == {"ROW_INVALID"}


def test_a_row_too_large_for_any_request_is_given_up_alone(monkeypatch):
    rows = [usage_row(n) for n in range(3)]
    rows[1][1]["reason"] = "x" * 400
    monkeypatch.setattr(storage_write, "MAX_APPEND_BYTES", 300)
    fake = FakeWriteClient()
    written, failed = bundle(fake, rows)
    assert written[0].rows == 2
    assert [parts[0][1]["error_code"] for _, parts in failed] == ["ROW_TOO_LARGE"]
    assert [r["subject"] for _, _, request in fake.requests for r in request] == ["c0", "c2"]


def test_an_empty_bundle_opens_no_stream():
    fake = FakeWriteClient()
    assert bundle(fake, []) == ([], [])
    assert fake.created == 0


def test_streams_are_committed_once_and_a_retried_commit_changes_nothing():
    fake = FakeWriteClient()
    target = fake_target(fake)
    table = "projects/p/datasets/d/tables/t"
    parts = [Written(2, streams=(f"{table}/streams/a",)), Written(3, streams=(f"{table}/streams/b",))]
    total = total_written(parts)
    assert total == Written(5, 0, (), (f"{table}/streams/a", f"{table}/streams/b"))
    assert commit_pending_streams(total, target) == total
    assert set(fake.committed) == set(total.streams)
    commit_pending_streams(total, target)  # the commit step retried
    assert set(fake.committed) == set(total.streams)


def test_a_write_with_given_up_rows_commits_no_stream():
    fake = FakeWriteClient()
    target = fake_target(fake)
    commit_pending_streams(Written(2, 1, ("bad",), ("projects/p/datasets/d/tables/t/streams/a",)),
                           target)
    assert fake.committed == {}


def test_a_stream_that_is_refused_fails_the_commit():
    class Refusing(FakeWriteClient):
        def batch_commit_write_streams(self, request):
            return SimpleNamespace(stream_errors=[SimpleNamespace(
                entity=n, error_message="not finalized") for n in request.write_streams])

    with pytest.raises(storage_write.PendingStreamError, match="not finalized"):
        storage_write.commit_streams(Refusing(), ("projects/p/datasets/d/tables/t/streams/a",))
