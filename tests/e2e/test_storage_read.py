"""Period reads over the BigQuery Storage Read API, on the local emulator's gRPC port.

The emulator splits a read session into one stream per 100,000 rows, so the
`events` of this module hold more than 200,000 rows (the accepted copies of a
messy stream, with duplicates and conflicts): a recompute from BigQuery then
reads at least two streams, on the multi-process DirectRunner, and must give
exactly the usage a files-mode recompute gives over the same events in the
same (ingest) order.
"""
import io
import json
from decimal import Decimal

import orjson
import pytest
from google.cloud import bigquery

from schemas.events import Limits, UsageEvent, parse_payload
from schemas.tables import EVENTS, USAGE_RECOMPUTED
from schemas.values import format_decimal, parse_rfc3339
from tests.conftest import EXAMPLE_METERS
from tests.e2e.test_restate import PERIOD, tallyflow
from tests.messy import generate
from transforms.bigquery_target import BigQueryTarget
from transforms.rows import event_row
from transforms.storage_read import ReadTableStreams, query_frame

DATASET = "storage_read_test"
EMULATOR_ROWS_PER_STREAM = 100_000


@pytest.fixture(scope="module")
def client(stack):
    return stack.bigquery_client()


@pytest.fixture(scope="module")
def target(stack):
    return BigQueryTarget(stack.project, DATASET, stack.bigquery_endpoint,
                          storage_endpoint=stack.bigquery_grpc_address)


@pytest.fixture(scope="module")
def stored(stack, client, example_catalog, tmp_path_factory):
    """Every valid copy of a messy stream in `events`, ingested in line order, and the
    same events' raw texts as a JSONL file in that order."""
    messy = generate(seed=11, events=180_000, subjects=40)
    ingest = parse_rfc3339("2026-11-10T00:00:00Z")
    rows = []
    for n, line in enumerate(messy.lines, start=1):
        for result in parse_payload(line, f"msg-{n:07d}", (n,), example_catalog,
                                    Limits(now_ns=None), ingest_ns=ingest + n * 1000):
            if isinstance(result, UsageEvent):
                rows.append(event_row(result, "loader")[1])
    assert len(rows) > 2 * EMULATOR_ROWS_PER_STREAM
    ndjson = b"".join(orjson.dumps(row) + b"\n" for row in rows)
    client.load_table_from_file(
        io.BytesIO(ndjson), f"{stack.project}.{DATASET}.{EVENTS.name}",
        job_config=bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON)).result()
    path = tmp_path_factory.mktemp("storage-read") / "events.jsonl"
    path.write_text("".join(row["raw"] + "\n" for row in rows))
    return rows, path


def test_a_session_on_the_period_is_split_and_every_row_read_once(stored, target):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    rows, _ = stored
    in_period = [r["message_id"] for r in rows
                 if parse_rfc3339(PERIOD[0]) <= parse_rfc3339(r["time"]) < parse_rfc3339(PERIOD[1])]
    with beam.Pipeline() as p:
        ids = (p
               | ReadTableStreams(target, EVENTS, ["message_id"],
                                  f"time >= TIMESTAMP '{PERIOD[0]}' "
                                  f"AND time < TIMESTAMP '{PERIOD[1]}'", max_streams=8)
               | beam.FlatMap(lambda batch: batch.column("message_id").to_pylist()))
        assert_that(ids, equal_to(in_period))
    streams = p.result.metrics().query()["distributions"]
    assert [d.committed.max for d in streams if d.key.metric.name == "streams_per_session"] \
        == [len(in_period) // EMULATOR_ROWS_PER_STREAM + (len(in_period) % EMULATOR_ROWS_PER_STREAM > 0)]


def test_recompute_from_bigquery_equals_the_files_recompute(stack, client, stored, tmp_path):
    _, path = stored
    files = tallyflow(stack, "recompute", "--meters", str(EXAMPLE_METERS), "--input", str(path),
                      "--output-dir", str(tmp_path / "files"), "--period-start", PERIOD[0],
                      "--period-end", PERIOD[1])
    assert files.returncode == 0, files.stderr
    expected = {}
    for line in (tmp_path / "files" / "usage.jsonl").read_text().splitlines():
        row = json.loads(line)
        expected[(row["subject"], row["meter"], canonical(row["dimensions"]),
                  row["window_start"])] = (
            row["value"], row["event_count"], row["fingerprint"])

    result = tallyflow(stack, "recompute", "--meters", str(EXAMPLE_METERS), "--bigquery_dataset",
                       DATASET, "--period-start", PERIOD[0], "--period-end", PERIOD[1],
                       "--read_streams", "4", "--direct_num_workers", "2",
                       "--direct_running_mode", "multi_processing")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    files_summary = json.loads((tmp_path / "files" / "summary.json").read_text())
    assert summary["duplicates"] == files_summary["duplicates"] > 0
    assert summary["conflicting_duplicates"] == files_summary["conflicting_duplicates"] > 0

    restated = client.query(
        f"SELECT subject, meter, dimensions, FORMAT_TIMESTAMP('%Y-%m-%dT%H:%M:%SZ', window_start) "
        f"AS window_start, value, value_bignumeric, event_count, fingerprint "
        f"FROM `{stack.project}.{DATASET}.{USAGE_RECOMPUTED.name}` "
        f"WHERE run_id = @run_id",
        job_config=bigquery.QueryJobConfig(query_parameters=[
            bigquery.ScalarQueryParameter("run_id", "STRING", summary["run_id"])])).result()
    got = {(r["subject"], r["meter"], canonical(json.loads(r["dimensions"])), r["window_start"]):
           (format_decimal(r["value"]), r["event_count"], r["fingerprint"]) for r in restated}
    assert got == expected


def canonical(dimensions: dict) -> str:
    return json.dumps(dimensions, sort_keys=True)


def test_usage_into_pandas_stays_exact(stack, target, stored):
    frame = query_frame(
        target, f"SELECT CAST(@value AS NUMERIC) AS value, CAST(@big AS BIGNUMERIC) AS big, "
                f"COUNT(*) AS events FROM `{stack.project}.{DATASET}.{EVENTS.name}`",
        [("value", "STRING", "12345678901234567890.123456789"), ("big", "STRING", "0.5")])
    assert str(frame["value"].dtype).startswith("decimal128(38, 9)")
    assert frame["value"][0] == Decimal("12345678901234567890.123456789")
    assert frame["big"][0] == Decimal("0.5")
    assert frame["events"][0] == len(stored[0])
