"""Staging over pending Storage Write streams, on the local emulator's gRPC port:
nothing is visible before the commit step, a retried bundle's stream is never
committed, and values arrive exactly."""
import json
from decimal import Decimal

import apache_beam as beam
import pytest

from tests.test_storage_write import one_bundle
from transforms.bigquery import PENDING_METHOD, Written, WriteRows, total_written
from transforms.bigquery_target import BigQueryTarget
from transforms.restate import RecomputeRun, commit_pending_streams
from transforms.storage_write import row_encoder

DATASET = "storage_write_test"
HOUR = 3600 * 10 ** 9


@pytest.fixture(scope="module")
def target(stack):
    return BigQueryTarget(stack.project, DATASET, stack.bigquery_endpoint,
                          storage_endpoint=stack.bigquery_grpc_address)


def staging(stack, run_id: str):
    run = RecomputeRun(run_id, 0, HOUR, HOUR, "test", 1_700_000_000_000_000_000)
    stack.bigquery_client().create_table(
        run.staging_table.bigquery_table(stack.project, DATASET))
    return run


def usage_rows(run: RecomputeRun, n: int) -> list[tuple[str, dict]]:
    return [run.row({"subject": f"c{i}", "meter": "tokens", "dimensions": "{}",
                     "window_start": "2026-11-01T00:00:00.000001Z",
                     "window_end": "2026-11-01T01:00:00Z", "event_count": i,
                     "fingerprint": f"{i:032x}",
                     "value": f"{i}.123456789" if i % 2 else str(10 ** 28 + i)}, False)
            for i in range(n)]


def staged(stack, run) -> list[dict]:
    return [dict(r.items()) for r in stack.bigquery_client().query(
        f"SELECT subject, value, event_count, window_start "
        f"FROM `{stack.project}.{DATASET}.{run.staging_table.name}` ORDER BY event_count"
    ).result()]


def test_staged_rows_appear_exactly_at_the_commit_step_and_once(stack, target, tmp_path):
    run = staging(stack, "write-1")
    rows = usage_rows(run, 3000)
    out = tmp_path / "written.json"
    with beam.Pipeline() as p:
        _ = (p | beam.Create(rows)
             | WriteRows(target, run.staging_table, PENDING_METHOD)
             | beam.CombineGlobally(total_written)
             | beam.Map(lambda w: out.write_text(json.dumps(w._asdict()))))
    written = Written(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in json.loads(out.read_text()).items()})
    assert written.rows == 3000 and not written.failed and written.streams
    assert staged(stack, run) == []  # pending: invisible until committed
    commit_pending_streams(written, target)
    commit_pending_streams(written, target)  # a retried commit step
    got = staged(stack, run)
    assert [r["subject"] for r in got] == [row["subject"] for _, row in rows]
    assert [r["value"] for r in got] == [Decimal(row["value"]) for _, row in rows]
    assert {r["window_start"].isoformat() for r in got} == {"2026-11-01T00:00:00.000001+00:00"}


def test_a_bundle_larger_than_a_request_is_appended_in_several(stack, target):
    """More bytes than the emulator's gRPC server takes in one message (4 MiB)."""
    run = staging(stack, "write-3")
    rows = usage_rows(run, 45_000)
    encode = row_encoder(run.staging_table)
    assert sum(len(encode(row)) for _, row in rows) > 4 << 20
    (written,), failed = one_bundle(target, run.staging_table, rows)
    assert written.rows == len(rows) and len(written.streams) == 1 and not failed


def test_a_retried_bundles_stream_is_never_committed(stack, target):
    """A bundle that failed after appending and ran again: two streams with the same
    rows; only the attempt whose output the runner kept is committed."""
    run = staging(stack, "write-2")
    rows = usage_rows(run, 50)
    attempts = []
    for _ in range(2):
        (written,), failed = one_bundle(target, run.staging_table, rows)
        assert not failed
        attempts.append(written)
    assert attempts[0].streams != attempts[1].streams
    commit_pending_streams(attempts[1], target)
    assert [r["event_count"] for r in staged(stack, run)] == list(range(50))
