"""What the local stack itself can take, whatever the pipeline does: the ceiling
for `benchmarks/streaming.py` on this machine.

1. Sink: `insert_rows_json` of realistic `events` rows straight into the
   BigQuery emulator, at several batch sizes (no Beam).
2. Bare pipeline: the streaming DirectRunner reading 100-event CloudEvents
   batches from the Pub/Sub emulator and writing one insertAll per bundle,
   with no validation, deduplication, aggregation or other table. Landed
   rate between 10% and 90%, as `benchmarks/streaming.py` measures it.

Every accepted event must land in `events` (SPEC §4), so no tallyflow
pipeline can go faster locally than (2).

    .venv/bin/python benchmarks/streaming_ceiling.py --events 20000
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import PipelineOptions

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from tallyflow.local.stack import down, up  # noqa: E402
from transforms.bigquery_target import BigQueryTarget  # noqa: E402
from streaming import Stack, follow, messages  # noqa: E402


def event_rows(payloads: list[bytes], message_id: str) -> list[dict]:
    """`events` rows as the pipeline writes them (raw and data as JSON text)."""
    return [{"source": e["source"], "id": e["id"], "type": e["type"], "subject": e["subject"],
             "time": e["time"], "data": orjson.dumps(e.get("data")).decode(),
             "raw": orjson.dumps(e).decode(), "ingest_time": e["time"],
             "message_id": message_id, "job_id": "ceiling"}
            for payload in payloads for e in orjson.loads(payload)]


def sink_rate(stack: Stack, batch: int, count: int) -> float:
    rows = event_rows(messages(0, count, 100, f"sink{batch}", 500), "m")
    started = time.monotonic()
    for i in range(0, count, batch):
        chunk = rows[i:i + batch]
        errors = stack.bq.insert_rows_json(stack.events_table, chunk, row_ids=[r["id"] for r in chunk])
        if errors:
            raise RuntimeError(errors[:3])
    return count / (time.monotonic() - started)


class InsertPerBundle(beam.DoFn):
    """One insertAll per bundle of Pub/Sub messages: the least a streaming job can do."""

    def __init__(self, endpoint: str, project: str, table: str):
        self._endpoint, self._project, self._table = endpoint, project, table

    def setup(self):
        self._client = BigQueryTarget(self._project, self._table.split(".")[1],
                                      self._endpoint).client()

    def start_bundle(self):
        self._rows = []

    def process(self, message):
        self._rows.extend(event_rows([message.data], message.message_id))

    def finish_bundle(self):
        if self._rows and self._client.insert_rows_json(
                self._table, self._rows, row_ids=[r["id"] for r in self._rows]):
            raise RuntimeError("insert failed")


def run_bare_job(subscription: str, endpoint: str, project: str, table: str) -> None:
    pipeline = beam.Pipeline(options=PipelineOptions(streaming=True))
    _ = (pipeline | beam.io.ReadFromPubSub(subscription=subscription, with_attributes=True)
         | beam.ParDo(InsertPerBundle(endpoint, project, table)))
    pipeline.run().wait_until_finish()


def bare_pipeline_rate(stack: Stack, count: int, log: Path, timeout: float) -> float:
    stack.publish(messages(0, count, 100, "bare", 500))
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": stack.lane.pubsub_host}
    job = subprocess.Popen(
        [sys.executable, __file__, "--bare-job", stack.lane.subscription_path(),
         stack.lane.bigquery_endpoint, stack.lane.project, stack.events_table],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        return follow(stack, job, count, log, timeout)[0]
    finally:
        job.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[500, 1000, 2000, 5000])
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--bare-job", nargs=4, help=argparse.SUPPRESS,
                        metavar=("SUBSCRIPTION", "ENDPOINT", "PROJECT", "TABLE"))
    args = parser.parse_args()
    if args.bare_job:  # the job process of `bare_pipeline_rate`
        run_bare_job(*args.bare_job)
        return 0
    run_dir = tempfile.mkdtemp(prefix="tallyflow-ceiling-")
    stack = up(run_dir)
    try:
        print("sink: insert_rows_json into the BigQuery emulator, no Beam")
        print(f"{'rows/insert':>11} {'rows/s':>7}")
        for batch in args.batch_sizes:
            print(f"{batch:>11} {sink_rate(Stack(stack, 'sink'), batch, args.events):>7.0f}")
        log = Path(run_dir) / "bare_job.log"
        rate = bare_pipeline_rate(Stack(stack, "bare"), args.events, log, args.timeout)
        print(f"bare DirectRunner pipeline (pull -> one insertAll per bundle): {rate:.0f} events/s")
    finally:
        down(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
