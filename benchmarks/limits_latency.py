"""Usage alert latency on the local stack: a crossing event's publish -> its alert on Pub/Sub.

Starts a private local stack and `tallyflow stream` (DirectRunner, its own
process) with limits whose thresholds are 1, 2, 3, ... requests of a COUNT
meter, so the n-th request published crosses threshold n. One request is
published every `--interval` seconds; a subscriber on the alert topic notes
when each threshold's alert arrives. Latency = alert received - request
published, p50 and p95 (threshold 1 warms the job up and is left out). Every
threshold must alert exactly once: the script fails otherwise. For comparison,
the same requests' publish -> row visible in `events` (the pipeline's floor
on this machine at that moment, polled every 0.5 s).

Target (docs/limits.md): p95 at most `--early-firing-seconds` + 5 s. The
machine's 1-minute load average is sampled during the run and printed (lowest
and highest): the figures mean little without it on a shared machine.

    .venv/bin/python benchmarks/limits_latency.py --samples 40 --early-firing-seconds 5
    .venv/bin/python benchmarks/limits_latency.py --samples 5 --interval 40  # each alone
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.streaming import Stack, percentile  # noqa: E402
from tallyflow.local.stack import down, up  # noqa: E402
from schemas.values import format_time  # noqa: E402

SUBJECT = "cust-bench"


def limit_files(folder: Path, thresholds: int) -> tuple[Path, Path]:
    prices = {"plans": [{"id": "bench", "currency": "USD", "versions": [{
        "version": 1, "starting_at": "2020-01-01T00:00:00Z",
        "prices": [{"id": "requests", "meter": "api_requests", "model": "per_unit",
                    "unit_amount": "0.01"}]}]}],
        "assignments": [{"subject": SUBJECT, "plan": "bench",
                         "starting_at": "2020-01-01T00:00:00Z"}]}
    limits = {"limits": [{"plan": "bench", "meter": "api_requests",
                          "thresholds": list(range(1, thresholds + 1))}]}
    (folder / "prices.yaml").write_text(yaml.safe_dump(prices))
    (folder / "limits.yaml").write_text(yaml.safe_dump(limits))
    return folder / "prices.yaml", folder / "limits.yaml"


def request(n: int) -> bytes:
    return json.dumps({"specversion": "1.0", "id": f"req-{n}", "source": "//bench/limits",
                       "type": "api.request", "subject": SUBJECT,
                       "time": format_time(time.time_ns()),
                       "data": {"method": "GET", "bytes_out": 1}}).encode()


def listen(stack: Stack, subscription: str, arrived: dict, stop: threading.Event) -> None:
    """Pulls alerts until `stop`: {threshold: [monotonic arrival, ...]}."""
    subscriber = stack.lane.subscriber_client()
    while not stop.is_set():
        response = subscriber.pull(subscription=subscription, max_messages=100,
                                   return_immediately=True, timeout=10)
        now = time.monotonic()
        if not response.received_messages:
            time.sleep(0.05)
            continue
        subscriber.acknowledge(subscription=subscription,
                               ack_ids=[m.ack_id for m in response.received_messages])
        for m in response.received_messages:
            arrived.setdefault(int(m.message.attributes["threshold"]), []).append(now)


def watch_events(stack: Stack, published: dict, visible: dict, stop: threading.Event) -> None:
    """Notes when each published request's row appears in `events`: {n: monotonic}."""
    while not stop.is_set():
        pending = [n for n in list(published) if n not in visible]
        if pending:
            now = time.monotonic()
            for found in stack.seen([f"req-{n}" for n in pending]):
                visible[int(found.removeprefix("req-"))] = now
        stop.wait(0.5)


def sample_load(loads: list, stop: threading.Event) -> None:
    """The 1-minute load average every 5 s until `stop`."""
    while not stop.is_set():
        loads.append(os.getloadavg()[0])
        stop.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--interval", type=float, default=1.5)
    parser.add_argument("--early-firing-seconds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=180,
                        help="Seconds to wait for the warm-up alert (job start) and the last.")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="tallyflow-bench-limits-"))
    local = up(run_dir, progress=lambda message: None)
    job = None
    try:
        stack = Stack(local, "limits")
        topic = stack.lane.topic_path(f"{stack.lane.topic}-alerts")
        subscription = stack.lane.subscription_path(f"{stack.lane.topic}-alerts-sub")
        stack.publisher.create_topic(name=topic)
        stack.lane.subscriber_client().create_subscription(name=subscription, topic=topic)
        prices, limits = limit_files(run_dir, args.samples + 1)
        log = run_dir / "stream.log"
        job = stack.start_job(log, "--early_firing_seconds", str(args.early_firing_seconds),
                              "--limits", str(limits), "--prices", str(prices),
                              "--alert_topic", topic)
        arrived, stop, loads = {}, threading.Event(), []
        listener = threading.Thread(target=listen, args=(stack, subscription, arrived, stop),
                                    daemon=True)
        listener.start()
        threading.Thread(target=sample_load, args=(loads, stop), daemon=True).start()
        deadline = time.monotonic() + args.timeout
        while 1 not in arrived:  # the warm-up request: the job is running
            if job.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no warm-up alert; see {log}")
            stack.publish([request(1)])
            time.sleep(2)
        published, visible = {}, {}
        watcher = threading.Thread(target=watch_events, args=(stack, published, visible, stop),
                                   daemon=True)
        watcher.start()
        for n in range(2, args.samples + 2):
            time.sleep(args.interval)  # the first too: the warm-up's own work is done
            published[n] = time.monotonic()
            stack.publish([request(n)])
        deadline = time.monotonic() + args.timeout
        while not (published.keys() <= arrived.keys() and published.keys() <= visible.keys()
                   ) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2 * args.early_firing_seconds)  # time for any extra alert to show
        stop.set()
        listener.join(timeout=30)
        watcher.join(timeout=30)
        missing = sorted(published.keys() - arrived.keys())
        repeated = sorted(n for n, times in arrived.items() if len(times) > 1)
        if missing or repeated:
            raise RuntimeError(f"thresholds without an alert: {missing}; alerted more than "
                               f"once: {repeated}")
        waits = [arrived[n][0] - published[n] for n in published]
        stored = [visible[n] - published[n] for n in published if n in visible]
        print(f"{'early s':>7} {'samples':>7} {'p50 s':>6} {'p95 s':>6} {'max s':>6} "
              f"{'target s':>8} {'events p50 s':>12} {'events p95 s':>12} {'load':>11}")
        print(f"{args.early_firing_seconds:>7} {len(waits):>7} {percentile(waits, 50):>6.2f} "
              f"{percentile(waits, 95):>6.2f} {max(waits):>6.2f} "
              f"{args.early_firing_seconds + 5:>8} {percentile(stored, 50):>12.2f} "
              f"{percentile(stored, 95):>12.2f} {min(loads):>5.1f}-{max(loads):<5.1f}")
    finally:
        if job is not None:
            job.send_signal(signal.SIGTERM)
            try:
                job.wait(timeout=120)
            except subprocess.TimeoutExpired:
                job.kill()
        down(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
