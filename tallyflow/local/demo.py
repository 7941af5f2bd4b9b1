"""tallyflow demo: the whole story on the local stack, in a few minutes.

1. Start the local stack (Pub/Sub and BigQuery emulators) and its tables.
2. Publish a realistic, messy stream: a few thousand usage events of an API +
   LLM product in CloudEvents batch messages, with redelivered and conflicting
   duplicates, late and too-late events, and invalid ones.
3. Run the streaming pipeline (DirectRunner) until every record has landed,
   and show the provisional usage it produced.
4. Recompute the period from the stored events (a committed revision) and
   reconcile it with the stream: the windows the too-late events touched differ.
5. Report: final usage per customer, where every record went (conservation),
   and what changed and why.

Event times are recent (the DirectRunner's watermark is the wall clock), so
windows are one minute and allowed lateness five: the stream's too-late events
(minutes to a day old) reach only `late_events` and the recompute.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from decimal import Decimal

from tallyflow.local import stack as local_stack
from pipelines.policy import CommandFailed, run_command
from tallyflow.local.publish import Outgoing, Progress, publish
from tallyflow.reports.reconcile import STATUSES, reconcile
from tallyflow.local.synthetic import SyntheticConfig, count_kinds, generate
from tallyflow.examples import METERS
from schemas import sql
from schemas.values import NS, format_decimal, format_time
from transforms.bigquery_target import query

WINDOW_NS = 60 * NS
LATENESS_NS = 5 * 60 * NS


def say(text: str = "") -> None:
    print(text, flush=True)


def step(number: int, title: str) -> None:
    say(f"\n== {number}. {title} " + "=" * max(0, 66 - len(title)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tallyflow demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=os.environ.get("TALLYFLOW_RUN_DIR",
                                                            local_stack.DEFAULT_RUN_DIR),
                        help="Where the local stack keeps its state and logs.")
    parser.add_argument("--events", type=int, default=3000, help="Events to publish.")
    parser.add_argument("--seed", type=int, default=7, help="Seed of the synthetic stream.")
    parser.add_argument("--keep", action="store_true",
                        help="Leave the stack running afterwards (for queries).")
    args = parser.parse_args(argv)
    return run_command("tallyflow demo", Demo(args).run)


class Demo:
    def __init__(self, args):
        self.args = args
        self.run_id = f"demo-{time.strftime('%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:4]}"

    def run(self) -> int:
        step(1, "local stack")
        base = local_stack.up(self.args.run_dir, progress=lambda m: say(f"   {m}"))
        self.stack = dataclasses.replace(
            base, dataset=self.run_id.replace("-", "_"), topic=self.run_id,
            subscription=f"{self.run_id}-sub")
        local_stack.provision(self.stack)
        self.client = self.stack.bigquery_client()
        say(f"   Pub/Sub {self.stack.pubsub_host}, BigQuery {self.stack.bigquery_endpoint}, "
            f"dataset {self.stack.dataset}")
        try:
            return self._story()
        finally:
            if not self.args.keep:
                local_stack.down(self.args.run_dir)
                say("\n   local stack stopped (run with --keep to query it afterwards)")

    def _story(self) -> int:
        step(2, "a messy usage stream")
        messages = self._messages()
        kinds = count_kinds(messages)
        records = sum(len(m.labels) for m in messages)
        say(f"   {records} events in {len(messages)} messages: " + ", ".join(
            f"{n} {kind}" for kind, n in sorted(kinds.items()) if ":" not in kind))

        step(3, "streaming pipeline (provisional usage)")
        stream = self._start_stream()
        try:
            outgoing = [Outgoing.of(m.data) for m in messages]
            publish(self.stack.publisher_client(), self.stack.topic_path(), outgoing, "ce-time",
                    Progress(len(outgoing), "messages"))
            landed = self._wait_until_landed(records)
            self._wait_for_last_panes()
        finally:
            stream.send_signal(signal.SIGKILL)  # every record has landed: nothing to lose
            stream.wait(timeout=30)
        say(f"   every record landed: {landed}")
        self._show_usage("provisional (latest streaming panes)", "stream")

        step(4, "recompute the period, then reconcile")
        start, end = self._period()
        self._tallyflow("recompute", "--meters", str(METERS), "--window", "1m",
                        "--period-start", format_time(start), "--period-end", format_time(end),
                        "--reason", "demo: close the period")
        run_id, statuses = reconcile(self.client, self.stack.target(), start, end)
        say(f"   recomputed {format_time(start)} .. {format_time(end)}; reconciliation "
            f"{run_id}: " + ", ".join(f"{statuses.get(s, 0)} {s}" for s in STATUSES))

        step(5, "report")
        self._show_usage("final (recomputed)", "recompute")
        self._conservation(records, landed)
        self._changes(run_id)
        return 0

    # ------------------------------------------------------------ pieces

    def _messages(self):
        now = time.time_ns()
        span = 90 * NS
        return generate(SyntheticConfig(
            seed=self.args.seed, customers=6, events=self.args.events,
            rate=self.args.events / (span / NS), start_ns=now - span, batch_size=50,
            duplicate_fraction=0.06, conflict_fraction=0.2, late_fraction=0.05,
            too_late_fraction=0.03, invalid_fraction=0.03, window_ns=WINDOW_NS,
            allowed_lateness_ns=LATENESS_NS))

    def _env(self) -> dict:
        return {**os.environ, **self.stack.env()}

    def _start_stream(self) -> subprocess.Popen:
        say("   starting tallyflow stream (DirectRunner) ...")
        return subprocess.Popen(
            [sys.executable, "-m", "tallyflow.cli", "stream",
             "--subscription", self.stack.subscription_path(), "--meters", str(METERS),
             "--bigquery_dataset", self.stack.dataset, "--window", "1m",
             "--allowed_lateness", f"{LATENESS_NS // NS}s", "--early_firing_seconds", "5",
             "--job_name", f"{self.run_id}-stream", "--run_seconds", "900"],
            env=self._env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait_until_landed(self, records: int, timeout: float = 300) -> Counter:
        deadline = time.monotonic() + timeout
        while True:
            landed = Counter({name: self._count(name) for name in
                              ("events", "duplicate_events", "dead_letter")})
            done = sum(landed.values())
            print(f"\r   landed {done}/{records} records", end="", flush=True)
            if done >= records:
                say()
                return landed
            if time.monotonic() > deadline:
                raise CommandFailed(f"only {done} of {records} records landed in {timeout} s")
            time.sleep(2)

    def _wait_for_last_panes(self, timeout: float = 120) -> None:
        """Records land before the panes that count them: wait until the latest panes of
        `api_requests` (a COUNT) count every in-time api.request event."""
        expected = self._query(sql.DEMO_UNCOUNTED_REQUESTS)[0]["n"]
        deadline = time.monotonic() + timeout
        while True:
            counted = self._query(sql.DEMO_COUNTED_REQUESTS)[0]["n"]
            if counted == expected:
                return
            if time.monotonic() > deadline:
                raise CommandFailed(f"the stream's panes count {counted} of {expected} requests")
            time.sleep(2)

    def _count(self, table: str) -> int:
        return self._query(sql.ROW_COUNT, table=table)[0]["n"]

    def _period(self) -> tuple[int, int]:
        row = self._query(sql.EVENT_TIME_SPAN)[0]
        lo, hi = row["lo"] * 1000, row["hi"] * 1000
        return lo - lo % WINDOW_NS, hi - hi % WINDOW_NS + WINDOW_NS

    def _show_usage(self, title: str, origin: str) -> None:
        rows = self._query(sql.DEMO_USAGE_BY_ORIGIN, [("origin", "STRING", origin)])
        say(f"\n   usage, {title}: additive meters summed over the period")
        say(f"   {'customer':<12} {'meter':<18} {'total':>22} {'events':>7} {'windows':>7}")
        for r in rows:
            say(f"   {r['subject']:<12} {r['meter']:<18} {_plain(r['total']):>22} "
                f"{r['events']:>7} {r['windows']:>7}")

    def _conservation(self, records: int, landed: Counter) -> None:
        late = self._count("late_events")
        codes = self._query(sql.DEAD_LETTERS_BY_CODE)
        say("\n   where every record went")
        say(f"   accepted (events table)      {landed['events']:>6}   of which too late: {late}")
        say(f"   duplicates dropped           {landed['duplicate_events']:>6}")
        say(f"   dead-lettered                {landed['dead_letter']:>6}   " + ", ".join(
            f"{r['error_code']} {r['n']}" for r in codes))
        total = sum(landed.values())
        verdict = "holds" if total == records else "DOES NOT HOLD"
        say(f"   published {records} = {total} accounted for: conservation {verdict}")

    def _changes(self, reconciliation_run: str) -> None:
        rows = self._query(sql.DEMO_CHANGES, [("run_id", "STRING", reconciliation_run)])
        say("\n   what the recompute changed, and why (too-late events the stream could not "
            "count)")
        for r in rows:
            say(f"   {r['window_start']:%H:%M} {r['subject']:<10} {r['meter']:<18} "
                f"{_plain(r['stream_value']):>14} -> {_plain(r['batch_value']):<14} "
                f"({r['stream_event_count'] or 0} -> {r['batch_event_count'] or 0} events) "
                f"{r['status']}")
        say(f"\n   explore: eval \"$(tallyflow local env --run-dir {self.args.run_dir})\"; "
            f"dataset {self.stack.dataset} (docs/analysts.md)")

    def _tallyflow(self, *args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "tallyflow.cli", *args,
                                 "--bigquery_dataset", self.stack.dataset],
                                env=self._env(), capture_output=True, text=True)
        if result.returncode:
            raise CommandFailed(f"tallyflow {args[0]} failed: {result.stderr.strip()[-500:]}")

    def _query(self, statement: str, params=(), table: str | None = None) -> list[dict]:
        """Rows of a `schemas.sql` statement on the demo's dataset."""
        target = self.stack.target()
        return query(self.client, target.sql(statement, **({"table": target.table(table)}
                                                            if table else {})), params)


def _plain(value) -> str:
    return "-" if value is None else format_decimal(Decimal(value))


if __name__ == "__main__":
    sys.exit(main())
