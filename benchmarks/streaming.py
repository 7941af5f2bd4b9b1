"""Streaming throughput and latency on the local stack (Pub/Sub emulator -> BigQuery emulator).

Starts a private local stack, then for each message size (events per
message: 1 is a plain CloudEvent, more is a CloudEvents batch):

1. Throughput: publishes `--events` on-time events as a backlog, starts
   `tallyflow stream` (DirectRunner, in its own process) and follows
   `COUNT(*)` of the `events` table each second. The sustained rate is the
   slope between 10% and 90% of the events landed (start-up excluded).
2. Latency: with the job still running and idle, publishes a message every
   `--latency-interval` seconds for `--latency-seconds`, and polls for the
   message's first event every 0.2 s: publish -> row visible in BigQuery,
   p50 and p95 (the poll interval bounds the error).

Every event of the run must land in `events`: the script fails otherwise.

    .venv/bin/python benchmarks/streaming.py --events 20000 --message-sizes 1 100
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tallyflow.local.stack import down, provision, up  # noqa: E402
from tallyflow.local.publish import Outgoing  # noqa: E402
from schemas.values import format_time  # noqa: E402

METERS = ROOT / "tallyflow" / "examples" / "meters.yaml"
MODELS = ("gpt-4o", "llama-3.1-70b", "claude-3-5-sonnet")


def event(n: int, run: str, time_ns: int, customers: int) -> dict:
    """An on-time event of one of two metered types (three and two meters)."""
    common = {"specversion": "1.0", "id": f"{run}-{n}", "source": "//bench/stream",
              "subject": f"cust-{n % customers:05d}", "time": format_time(time_ns)}
    if n % 2:
        return {**common, "type": "llm.completion",
                "data": {"model": MODELS[n % 3], "input_tokens": 100 + n % 900,
                         "output_tokens": 10 + n % 90, "cost_usd": f"0.{n % 10 ** 6:06d}"}}
    return {**common, "type": "api.request",
            "data": {"method": "GET" if n % 3 else "POST", "bytes_out": n % 5000}}


def messages(first: int, count: int, size: int, run: str, customers: int) -> list[bytes]:
    now = time.time_ns()
    events = [event(n, run, now, customers) for n in range(first, first + count)]
    if size == 1:
        return [json.dumps(e).encode() for e in events]
    return [json.dumps(events[i:i + size]).encode() for i in range(0, len(events), size)]


class Stack:
    """A lane (dataset, topic, subscription) of its own on the benchmark's stack."""

    def __init__(self, stack, label: str):
        uid = uuid.uuid4().hex[:6]
        self.lane = dataclasses.replace(stack, dataset=f"bench_{label}_{uid}",
                                        topic=f"bench-{label}-{uid}",
                                        subscription=f"bench-{label}-{uid}-sub")
        provision(self.lane)
        self.bq = self.lane.bigquery_client()
        self.publisher = self.lane.publisher_client()
        self.events_table = f"{self.lane.project}.{self.lane.dataset}.events"
        self.table = f"`{self.events_table}`"

    def publish(self, payloads: list[bytes]) -> None:
        futures = []
        for payload in payloads:
            outgoing = Outgoing.of(payload)
            futures.append(self.publisher.publish(self.lane.topic_path(), payload,
                                                  **{"ce-time": outgoing.time}))
        for future in futures:
            future.result(timeout=120)

    def count(self) -> int:
        return next(iter(self.bq.query(f"SELECT COUNT(*) AS n FROM {self.table}").result()))["n"]

    def seen(self, ids: list[str]) -> set[str]:
        quoted = ",".join(f"'{i}'" for i in ids)
        return {row["id"] for row in self.bq.query(
            f"SELECT id FROM {self.table} WHERE id IN ({quoted})").result()}

    def start_job(self, log: Path, *extra: str) -> subprocess.Popen:
        """`tallyflow stream` on this lane; `extra` options come last (and win)."""
        env = {**os.environ, "PUBSUB_EMULATOR_HOST": self.lane.pubsub_host}
        return subprocess.Popen(
            [sys.executable, "-m", "pipelines.streaming_usage",
             "--subscription", self.lane.subscription_path(), "--meters", str(METERS),
             "--bigquery_project", self.lane.project, "--bigquery_dataset", self.lane.dataset,
             "--bigquery_endpoint", self.lane.bigquery_endpoint, "--window", "1m",
             "--allowed_lateness", "1h", "--early_firing_seconds", "5", *extra],
            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def follow(stack: Stack, job: subprocess.Popen, events: int, log: Path,
           timeout: float) -> tuple[float, float]:
    """Polls `events` until all landed: (events/s between 10% and 90% landed, seconds to all).

    Kills the job if it dies or times out first, and fails on extra rows.
    """
    started, points = time.monotonic(), []
    while True:
        landed = stack.count()
        points.append((time.monotonic(), landed))
        if landed >= events:
            break
        if job.poll() is not None or time.monotonic() - started > timeout:
            job.kill()
            raise RuntimeError(f"{landed}/{events} events landed; see {log}")
        time.sleep(1)
    if landed != events:
        raise RuntimeError(f"{landed} rows for {events} events")
    t10, n10 = next(p for p in points if p[1] >= 0.1 * events)
    t90, n90 = next(p for p in points if p[1] >= 0.9 * events)
    rate = (n90 - n10) / (t90 - t10) if t90 > t10 else float("nan")  # float-ok: a rate
    return rate, points[-1][0] - started


def throughput(stack: Stack, events: int, size: int, customers: int, log: Path,
               timeout: float) -> tuple[subprocess.Popen, float, float]:
    """(running job, events/s between 10% and 90% landed, seconds from start to all landed)."""
    stack.publish(messages(0, events, size, "bulk", customers))
    job = stack.start_job(log)
    return (job, *follow(stack, job, events, log, timeout))


def latency(stack: Stack, size: int, customers: int, interval: float,
            seconds: float) -> list[float]:
    """Publish -> visible seconds of a message sent every `interval` s."""
    sent: dict[str, float] = {}
    stop = threading.Event()

    def send():
        n = 10 ** 7
        while not stop.is_set():
            payload = messages(n, size, size, "lat", customers)[0]
            sent[f"lat-{n}"] = time.monotonic()
            stack.publish([payload])
            n += size
            stop.wait(interval)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    seen: dict[str, float] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline + 90:  # then stragglers get 90 s
        if time.monotonic() > deadline:
            stop.set()
        pending = [i for i in list(sent) if i not in seen]
        if stop.is_set() and not pending:
            break
        if pending:
            now = time.monotonic()
            for found in stack.seen(pending):
                seen[found] = now
        time.sleep(0.2)
    stop.set()
    sender.join()
    missing = set(sent) - set(seen)
    if missing:
        raise RuntimeError(f"{len(missing)} latency messages never landed")
    return [seen[i] - sent[i] for i in sent]


def stop(job: subprocess.Popen) -> None:
    """Stops a `tallyflow stream` job as an operator would: SIGTERM, then a kill."""
    job.send_signal(signal.SIGTERM)
    try:
        job.wait(timeout=120)
    except subprocess.TimeoutExpired:
        job.kill()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--message-sizes", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--latency-seconds", type=float, default=30)
    parser.add_argument("--latency-interval", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="tallyflow-bench-stack-"))
    stack = up(run_dir, progress=lambda message: None)
    print(f"{'events/msg':>10} {'events':>7} {'events/s':>9} {'drain s':>8} "
          f"{'p50 s':>6} {'p95 s':>6} {'samples':>7}", flush=True)
    try:
        for size in args.message_sizes:
            lane = Stack(stack, f"m{size}")
            log = run_dir / f"stream-m{size}.log"
            job, rate, drained = throughput(lane, args.events, size, args.customers, log,
                                            args.timeout)
            try:
                waits = latency(lane, size, args.customers, args.latency_interval,
                                args.latency_seconds)
            finally:
                stop(job)
            print(f"{size:>10} {args.events:>7} {rate:>9.0f} {drained:>8.1f} "
                  f"{percentile(waits, 50):>6.2f} {percentile(waits, 95):>6.2f} "
                  f"{len(waits):>7}", flush=True)
    finally:
        down(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
