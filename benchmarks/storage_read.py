"""Recompute from BigQuery (Storage Read API streams) against recompute from files.

One private local stack; the seeded synthetic stream of `batch_recompute.py`
(--events, default 1M) is parsed once, its accepted events loaded into
`events` (an NDJSON load job, ingested in line order) and written, in that
order, to a JSONL file. Then, each a separate process measured with
/usr/bin/time (wall seconds, peak RSS of the largest process):

- `tallyflow recompute --input FILE --output-dir` (the files path, in memory);
- `tallyflow recompute` from BigQuery with 1, 2 and 4 read streams and as
  many DirectRunner worker processes (--streams).

Every BigQuery run's committed rows are checked against the files run's
usage.jsonl, row for row. The emulator cuts a session into one stream per
100,000 rows, so fewer rows than streams x 100,000 give fewer streams.
Then the restore's replay read three ways (REST query, query result over
Storage Read streams, table with a row restriction), and last the staging
write rate per method: insertAll (500 rows per request, as `WriteRows` sends
them) and pending Storage Write streams (as the recompute stages), with the
client's CPU per row.

    .venv/bin/python benchmarks/storage_read.py --events 1000000
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from google.cloud import bigquery

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batch_recompute import PYTHON, ROOT, measure_cpu, synthetic_file  # noqa: E402
from tallyflow.local.stack import down, up  # noqa: E402
from schemas.catalog import parse_catalog_text  # noqa: E402
from schemas.events import Limits, UsageEvent, parse_payload  # noqa: E402
from schemas.tables import EVENTS, USAGE_RECOMPUTED  # noqa: E402
from schemas.values import format_decimal, format_time, parse_rfc3339  # noqa: E402
from tests.test_storage_write import one_bundle  # noqa: E402
from transforms.bigquery import encoded_size  # noqa: E402
from transforms.bigquery_target import BigQueryTarget  # noqa: E402
from transforms.bigquery_target import query_config  # noqa: E402
from transforms.restate import EVENT_COLUMNS, RecomputeRun  # noqa: E402
from transforms.storage_read import ReadQueryStreams, ReadTableStreams  # noqa: E402
from transforms.storage_write import commit_streams, row_encoder  # noqa: E402
from transforms.rows import event_row  # noqa: E402

HOUR = 3600 * 10 ** 9
METERS = ROOT / "tallyflow" / "examples" / "meters.yaml"


def load_events(stack, source: Path, out: Path) -> tuple[int, int, int]:
    """Accepted events of `source` into `events` and `out`; (rows, period start, end)."""
    catalog = parse_catalog_text(METERS.read_text(), str(METERS))
    ingest = parse_rfc3339("2030-01-01T00:00:00Z")
    rows = []
    with source.open("rb") as f:
        for n, line in enumerate(f, start=1):
            for result in parse_payload(line.rstrip(b"\n"), f"msg-{n:09d}", (n,), catalog,
                                        Limits(now_ns=None), ingest_ns=ingest + n * 1000):
                if isinstance(result, UsageEvent):
                    rows.append(event_row(result, "bench")[1])
    out.write_text("".join(r["raw"] + "\n" for r in rows))
    client = stack.bigquery_client()
    for i in range(0, len(rows), 200_000):
        ndjson = b"".join(orjson.dumps(r) + b"\n" for r in rows[i:i + 200_000])
        client.load_table_from_file(
            io.BytesIO(ndjson), f"{stack.project}.{stack.dataset}.{EVENTS.name}",
            job_config=bigquery.LoadJobConfig(
                source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON)).result()
    times = [parse_rfc3339(r["time"]) for r in rows]
    return len(rows), min(times) - min(times) % HOUR, max(times) - max(times) % HOUR + HOUR


def files_usage(out: Path) -> dict:
    rows = {}
    for line in (out / "usage.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[(r["subject"], r["meter"], json.dumps(r["dimensions"], sort_keys=True),
              r["window_start"])] = (r["value"], r["event_count"], r["fingerprint"])
    return rows


def committed_usage(stack, run_id: str) -> dict:
    result = stack.bigquery_client().query(
        f"SELECT subject, meter, dimensions, "
        f"FORMAT_TIMESTAMP('%Y-%m-%dT%H:%M:%SZ', window_start) AS w, value, event_count, "
        f"fingerprint FROM `{stack.project}.{stack.dataset}.{USAGE_RECOMPUTED.name}` "
        f"WHERE run_id = @run_id",
        job_config=bigquery.QueryJobConfig(query_parameters=[
            bigquery.ScalarQueryParameter("run_id", "STRING", run_id)])).result()
    return {(r["subject"], r["meter"], json.dumps(json.loads(r["dimensions"]), sort_keys=True),
             r["w"]): (format_decimal(r["value"]), r["event_count"], r["fingerprint"])
            for r in result}


def staging_rates(stack, rows: int) -> dict:
    """Usage rows into a staging table, per method: (rows/s until visible, client CPU
    µs per row, bytes per row on the wire). insertAll: 500 rows per request, as
    `WriteRows` sends them; pending: one bundle's pending stream through
    `AppendPending`, then `commit_streams`."""
    client = stack.bigquery_client()
    target = BigQueryTarget(stack.project, stack.dataset, stack.bigquery_endpoint,
                            storage_endpoint=stack.bigquery_grpc_address)
    rates = {}
    encode = row_encoder(USAGE_RECOMPUTED)
    for method in ("insertAll", "pending streams"):
        run = RecomputeRun(f"bench-{uuid.uuid4().hex[:6]}", 0, HOUR, HOUR, "bench",
                           time.time_ns())
        client.create_table(run.staging_table.bigquery_table(stack.project, stack.dataset))
        staged = [run.row({"subject": f"c{n}", "meter": "bytes_out", "dimensions": "{}",
                           "window_start": format_time(0), "window_end": format_time(HOUR),
                           "event_count": 1, "fingerprint": f"{n:032x}", "value": str(n)},
                          False) for n in range(rows)]
        table = f"{stack.project}.{stack.dataset}.{run.staging_table.name}"
        started, cpu = time.monotonic(), time.process_time()
        if method == "insertAll":
            for i in range(0, rows, 500):
                batch = staged[i:i + 500]
                assert client.insert_rows_json(table, [r for _, r in batch],
                                               row_ids=[k for k, _ in batch]) == []
        else:
            (written,), failed = one_bundle(target, run.staging_table, staged)
            assert not failed
            commit_streams(target.write_client(), written.streams)
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu
        (count,) = client.query(f"SELECT COUNT(*) AS n FROM `{table}`").result()
        if count["n"] != rows:
            raise RuntimeError(f"{method}: {count['n']} rows staged, not {rows}")
        wire = (sum(encoded_size(k, r) for k, r in staged) if method == "insertAll" else
                sum(len(encode(r)) for _, r in staged))
        rates[method] = (rows / seconds, cpu / rows * 1e6, wire / rows)
    return rates


def replay_reads(stack, start_ns: int) -> dict:
    """Seconds to read the stored events the way a restore replays them, per path:
    the REST query result (what one DoFn paged before), the query's result table over
    Storage Read streams (ReadQueryStreams: deduplicated in the query), and the table
    itself with a row restriction (ReadTableStreams: every copy, deduplicated later)."""
    import apache_beam as beam

    target = BigQueryTarget(stack.project, stack.dataset, stack.bigquery_endpoint,
                            storage_endpoint=stack.bigquery_grpc_address)
    sql = (f"SELECT raw, message_id, UNIX_MICROS(ingest_time) AS ingest_us "
           f"FROM `{target.table_id(EVENTS)}` WHERE time >= TIMESTAMP_MICROS(@since) "
           f"QUALIFY ROW_NUMBER() OVER (PARTITION BY source, id ORDER BY ingest_time) = 1")
    params = [("since", "INT64", start_ns // 1000)]
    seconds = {}
    started = time.monotonic()
    n = sum(1 for _ in stack.bigquery_client().query(sql, job_config=query_config(params))
            .result())
    seconds["REST query (one reader)"] = (time.monotonic() - started, n)
    reads = {"query -> Storage Read streams": ReadQueryStreams(target, sql, params),
             "table + row restriction": ReadTableStreams(
                 target, EVENTS, list(EVENT_COLUMNS),
                 f"time >= TIMESTAMP '{format_time(start_ns)}'")}
    for label, read in reads.items():
        started = time.monotonic()
        with beam.Pipeline() as p:
            _ = p | read
        rows = p.result.metrics().query()["counters"]
        seconds[label] = (time.monotonic() - started,
                          sum(c.committed for c in rows if c.key.metric.name == "rows"))
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--staging-rows", type=int, default=50_000)
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "tallyflow-bench"))
    args = parser.parse_args()
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="tallyflow-storage-read-"))
    stack = up(run_dir, progress=lambda message: None)
    try:
        events_file = data / f"stored-{args.events}.jsonl"
        rows, start, end = load_events(stack, synthetic_file(data, args.events), events_file)
        period = ["--period-start", format_time(start), "--period-end", format_time(end)]
        print(f"{rows} stored events, period {format_time(start)} .. {format_time(end)}; "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"{'run':<34} {'seconds':>8} {'events/s':>9} {'CPU s':>7} {'ev/CPU-s':>9} "
              f"{'peak MiB':>9} {'load':>5}", flush=True)
        out = data / "storage-read-files"
        seconds, mib, cpu = measure_cpu([PYTHON, "-m", "tallyflow.cli", "recompute", "--meters",
                                str(METERS), "--input", str(events_file), "--output-dir",
                                str(out), *period])
        print(f"{'files, in memory':<34} {seconds:>8.1f} {rows / seconds:>9.0f} {cpu:>7.1f} "
              f"{rows / cpu:>9.0f} {mib:>9.0f} {os.getloadavg()[0]:>5.1f}", flush=True)
        expected = files_usage(out)
        env = {**stack.env()}
        for streams in args.streams:
            summary = data / f"storage-read-{streams}.json"
            seconds, mib, cpu = measure_cpu(
                ["env", *(f"{k}={v}" for k, v in env.items()), PYTHON, "-c",
                 "import json, sys; from pipelines.recompute_usage import run; "
                 f"open({str(summary)!r}, 'w').write(json.dumps(run(sys.argv[1:])))",
                 "--meters", str(METERS), "--bigquery_dataset", stack.dataset, *period,
                 "--read_streams", str(streams), "--direct_num_workers", str(streams),
                 "--direct_running_mode", "multi_processing"])
            (result,) = json.loads(summary.read_text())
            if committed_usage(stack, result["run_id"]) != expected:
                raise RuntimeError(f"the BigQuery run with {streams} streams differs from files")
            label = f"BigQuery, {streams} stream(s) and worker(s)"
            print(f"{label:<34} {seconds:>8.1f} {rows / seconds:>9.0f} {cpu:>7.1f} "
                  f"{rows / cpu:>9.0f} {mib:>9.0f} {os.getloadavg()[0]:>5.1f}", flush=True)
        for label, (read_s, read_rows) in replay_reads(stack, start).items():
            print(f"replay read, {label:<32} {read_s:>6.1f} s {read_rows:>9} rows "
                  f"{read_rows / read_s:>9.0f} rows/s", flush=True)
        for method, (rate, cpu_us, wire) in staging_rates(stack, args.staging_rows).items():
            print(f"staging writes, {method:<16} {rate:>7.0f} rows/s, "
                  f"client {cpu_us:.1f} µs of CPU and {wire:.0f} bytes per row", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f} (1 min), "
              f"{os.getloadavg()[1]:.1f} (5 min), {os.getloadavg()[2]:.1f} (15 min)")
    finally:
        down(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
