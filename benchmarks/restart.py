"""Stop and restart without loss, measured as an operator would try it (issue 20).

On a private local stack: starts `tallyflow stream`, publishes `--events`
synthetic records (CloudEvents batches of `--batch`, with duplicates and
invalid events) a few messages at a time while it runs, sends SIGTERM (or
`--signal KILL`) `--stop-after` seconds after its first rows landed (so the
stop comes mid-stream however long the start takes), restarts it with
`--restore_open_windows`, waits until the tables hold every record, stops it
and reports:

- records published, and accounted for (`events` + `duplicate_events` +
  `dead_letter`), what the first job had written when it stopped;
- replayed: what the first job had written, delivered again by the seek back
  to its start point (the restart point of a job younger than
  `--replay_margin`) and recognised, not written again;
- events and duplicates stored twice;
- `usage` rows equal to a files-mode recompute of the published lines.

    .venv/bin/python benchmarks/restart.py --events 4288 --batch 40 --stop-after 2
"""
from __future__ import annotations

import argparse
import calendar
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from tallyflow.local.stack import down, up  # noqa: E402
from tallyflow.local.publish import Outgoing, Progress, publish  # noqa: E402
from tallyflow.local.synthetic import SyntheticConfig, generate  # noqa: E402
from schemas.values import NS  # noqa: E402
from streaming import METERS, Stack  # noqa: E402


def stream(stack: Stack, log: Path, *extra: str) -> subprocess.Popen:
    lane = stack.lane
    return subprocess.Popen(
        [sys.executable, "-m", "tallyflow.cli", "stream",
         "--subscription", lane.subscription_path(), "--meters", str(METERS),
         "--bigquery_project", lane.project, "--bigquery_dataset", lane.dataset,
         "--bigquery_endpoint", lane.bigquery_endpoint, "--window", "1m",
         "--allowed_lateness", "1h", "--early_firing_seconds", "5", *extra],
        cwd=ROOT.parent, env={**os.environ, **lane.env()},
        stdout=log.open("ab"), stderr=subprocess.STDOUT)


def accounted(stack: Stack) -> dict:
    table = lambda name: f"`{stack.lane.project}.{stack.lane.dataset}.{name}`"  # noqa: E731
    row = next(iter(stack.bq.query(f"""
        SELECT (SELECT COUNT(*) FROM {table('events')}) AS events,
               (SELECT COUNT(DISTINCT FORMAT('%t', (source, id))) FROM {table('events')})
                 AS identities,
               (SELECT COUNT(*) FROM {table('duplicate_events')}) AS duplicates,
               (SELECT COUNT(DISTINCT message_id) FROM {table('duplicate_events')})
                 AS duplicate_messages,
               (SELECT COUNT(*) FROM {table('dead_letter')}) AS dead_letters""").result()))
    row = dict(row.items())
    return {**row, "total": row["events"] + row["duplicates"] + row["dead_letters"]}


def usage_rows(stack: Stack) -> dict:
    rows = stack.bq.query(f"SELECT subject, meter, dimensions, UNIX_SECONDS(window_start) AS w,"
                          f" value, event_count FROM `{stack.lane.project}."
                          f"{stack.lane.dataset}.usage`").result()
    return {(r["subject"], r["meter"], json.dumps(json.loads(r["dimensions"]), sort_keys=True),
             r["w"]): (str(r["value"].normalize()), r["event_count"]) for r in rows}


def recomputed_rows(lines: Path, out: Path) -> dict:
    """The same lines through `tallyflow recompute` in files mode."""
    subprocess.run([sys.executable, "-m", "tallyflow.cli", "recompute", "--input", str(lines),
                    "--output-dir", str(out), "--meters", str(METERS), "--window", "1m"],
                   cwd=ROOT.parent, check=True, capture_output=True)
    rows = {}
    for line in (out / "usage.jsonl").read_text().splitlines():
        r = json.loads(line)
        start = calendar.timegm(time.strptime(r["window_start"][:19], "%Y-%m-%dT%H:%M:%S"))
        rows[(r["subject"], r["meter"], json.dumps(r["dimensions"], sort_keys=True), start)] = (
            str(Decimal(r["value"]).normalize()), r["event_count"])
    return rows


def publish_steadily(stack: Stack, payloads: list[bytes], per_second: int) -> threading.Thread:
    def run():
        for i in range(0, len(payloads), per_second):
            batch = [Outgoing.of(p) for p in payloads[i:i + per_second]]
            publish(stack.publisher, stack.lane.topic_path(), batch, "ce-time",
                    Progress(len(batch), "published", stream=io.StringIO()))
            time.sleep(1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=4288)
    parser.add_argument("--batch", type=int, default=40, help="events per message")
    parser.add_argument("--messages-per-second", type=int, default=10)
    parser.add_argument("--stop-after", type=float, default=2,
                        help="seconds after the first job's first rows landed")
    parser.add_argument("--signal", choices=("TERM", "KILL"), default="TERM")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="tallyflow-bench-restart-"))
    stack = up(run_dir, progress=lambda message: None)
    try:
        lane = Stack(stack, "restart")
        config = SyntheticConfig(seed=20, customers=50, events=args.events, rate=args.events / 20,
                                 start_ns=time.time_ns() - 10 * NS, batch_size=args.batch,
                                 duplicate_fraction=0.05, invalid_fraction=0.03,
                                 window_ns=60 * NS, allowed_lateness_ns=3600 * NS)
        messages = generate(config)
        records = sum(len(m.labels) for m in messages)
        lines = run_dir / "published.jsonl"
        lines.write_bytes(b"".join(m.data + b"\n" for m in messages))
        log = run_dir / "stream.log"

        first = stream(lane, log)
        started = time.monotonic()
        publisher = publish_steadily(lane, [m.data for m in messages], args.messages_per_second)
        while accounted(lane)["total"] == 0 and time.monotonic() < started + args.timeout:
            time.sleep(0.5)
        time.sleep(args.stop_after)
        stopped_after = time.monotonic() - started
        first.send_signal(getattr(signal, f"SIG{args.signal}"))
        first.wait(timeout=120)
        at_stop = accounted(lane)

        second = stream(lane, log, "--restore_open_windows")
        publisher.join()
        deadline = time.monotonic() + args.timeout
        while accounted(lane)["total"] < records and time.monotonic() < deadline:
            time.sleep(2)
        time.sleep(5)  # a few more write cycles: nothing may change
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=120)
        final = accounted(lane)
        streamed, recomputed = usage_rows(lane), recomputed_rows(lines, run_dir / "recompute")
        equal = sum(1 for k, v in recomputed.items() if streamed.get(k) == v)
        print(f"| records published | {records:,} |")
        print(f"| written when the first job stopped (SIG{args.signal} {stopped_after:.0f} s "
              f"after its start) | {at_stop['total']:,} |")
        print(f"| accounted for after the restart (events + duplicate_events + dead_letter) "
              f"| {final['total']:,} of {records:,} |")
        print(f"| replayed by the seek and recognised (what the first job had written) | "
              f"{at_stop['total']:,} |")
        print(f"| events stored twice | {final['events'] - final['identities']} |")
        print(f"| duplicates recorded twice | "
              f"{final['duplicates'] - final['duplicate_messages']} |")
        print(f"| `usage` rows equal to a files-mode recompute | {equal} of {len(recomputed)}"
              f"{'' if len(streamed) == len(recomputed) else f' ({len(streamed)} streamed)'} |")
        return 0 if final["total"] == records and equal == len(recomputed) else 1
    finally:
        down(run_dir)


if __name__ == "__main__":
    sys.exit(main())
