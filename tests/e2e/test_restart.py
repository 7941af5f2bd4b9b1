"""Stop and restart without loss: a real `tallyflow stream` subprocess on the local stack,
stopped with SIGTERM or SIGKILL while messages are in flight, then restarted with
`--restore_open_windows`, until every published record is accounted for.

The DirectRunner acknowledges a pull before processing it, so whatever the
stopped job had pulled but not written is only delivered again because the
restart seeks the subscription back to its restart point; what it had written
must then be recognised (replays) and not counted or recorded twice. Records are
published steadily in a thread while the jobs come and go, and each stop comes
as soon as the job has written something new, so messages are in flight.

Determinism on a wall-clock runner as in `test_streaming_e2e.py` (heartbeats
keep pulls returning; expectations from the generator's ground truth and the
independent reference). Lateness: the generator makes late events 2-4 minutes
old for a 5-minute lateness and the stream allows 10, so a late event that is
only delivered after a restart is still late, not too late; too-late events are
built here, 40 minutes old, clear of any boundary.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import pytest

from tallyflow.local.stack import _alive, _free_port, _pubsub_launcher, _spawn, provision
from tallyflow.local.synthetic import DUPLICATE, INVALID, LATE, ON_TIME
from tests.conftest import EXAMPLE_METERS, ROOT
from tests.e2e.test_streaming_e2e import (HEARTBEAT_SOURCE, MINUTE_NS, WAIT_SECONDS,
                                          as_payload, assert_usage_equals, event, expected_rows,
                                          labels_of, landed, lane, publish_messages, query,
                                          rfc3339, synthetic, table, usage_view, wait_for)

__all__ = ["lane"]  # the fixture, shared with the streaming end-to-end tests


class Stream:
    """`tallyflow stream` in a subprocess, its output in a log file."""

    def __init__(self, stack, log, job_name: str, *extra: str):
        self.log = log
        argv = [sys.executable, "-m", "tallyflow.cli", "stream",
                "--subscription", stack.subscription_path(), "--meters", str(EXAMPLE_METERS),
                "--bigquery_project", stack.project, "--bigquery_dataset", stack.dataset,
                "--bigquery_endpoint", stack.bigquery_endpoint, "--window", "1m",
                "--allowed_lateness", "10m", "--early_firing_seconds", "1",
                "--dedup_horizon", "48h", "--job_name", job_name, *extra]
        with log.open("a") as out:
            self.process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **stack.env()},
                                            stdout=out, stderr=subprocess.STDOUT)

    def stop(self, signum: int) -> int:
        """Sends `signum`; the exit code (bounded wait: a hang fails the test)."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"the job did not exit after signal {signum}: {self.output()[-2000:]}")

    def output(self) -> str:
        return self.log.read_text()


class Publishing(threading.Thread):
    """Publishes `payloads` a few messages at a time, like producers while jobs come and go;
    heartbeats every second until `stop()` so an idle pull returns at once."""

    def __init__(self, stack, payloads: list[bytes], per_round: int = 10):
        super().__init__(daemon=True)
        self.stack, self.payloads, self.per_round = stack, payloads, per_round
        self.finished, self._halt = threading.Event(), threading.Event()
        self._publisher = stack.publisher_client()

    def run(self):
        rounds = 0
        while not self._halt.is_set():
            batch = self.payloads[rounds * self.per_round:(rounds + 1) * self.per_round]
            if batch:
                publish_messages(self.stack, batch)
            else:
                self.finished.set()
            beat = {"specversion": "1.0", "id": f"beat-{uuid.uuid4()}", "source": HEARTBEAT_SOURCE,
                    "type": "tests.heartbeat", "subject": "heartbeat",
                    "time": rfc3339(time.time_ns())}
            self._publisher.publish(self.stack.topic_path(), as_payload(beat)).result(timeout=10)
            rounds += 1
            self._halt.wait(0.5 if batch else 1.0)

    def stop(self):
        self._halt.set()
        self.join(timeout=30)


def restart_stream(seed: int, events: int) -> dict:
    """A messy stream (batches, duplicates, late, too-late and invalid events) with the
    truth about it: payloads in publishing order and the expected outcome."""
    messages = synthetic(seed=seed, events=events, span_seconds=30, batch_size=40,
                         duplicate_fraction=0.1, late_fraction=0.15, invalid_fraction=0.08)
    labels = labels_of(messages)
    kinds = Counter(label.kind for label in labels)
    old = time.time_ns() - 40 * MINUTE_NS
    too_late = [[event(f"cust-{n % 5:04d}", "api.request", {"method": "GET", "bytes_out": n},
                       old + n * 1_000_000) for n in range(k, k + 10)] for k in range(0, 40, 10)]
    payloads = [m.data for m in messages]
    for n, batch in enumerate(too_late):  # spread over the stream
        payloads.insert((n + 1) * len(payloads) // (len(too_late) + 1), as_payload(batch))
    first_copies = [l.event for l in labels if l.kind in (ON_TIME, LATE)]
    late = [e for batch in too_late for e in batch]
    return {
        "payloads": payloads,
        "records": len(labels) + len(late),
        "usage": expected_rows(first_copies),
        "events": {(e["source"], e["id"]) for e in first_copies + late},
        "too_late": {(e["source"], e["id"]) for e in late},
        "duplicates": kinds[DUPLICATE],
        "dead_letters": kinds[INVALID],
    }


def assert_every_record_once(bq, lane, truth: dict) -> None:
    assert_usage_equals(usage_view(bq, lane), truth["usage"])
    assert landed(bq, lane) == {"events": len(truth["events"]),
                                "duplicates": truth["duplicates"],
                                "dead_letters": truth["dead_letters"],
                                "total": truth["records"]}
    not_heartbeat = f"WHERE source != '{HEARTBEAT_SOURCE}'"
    stored = query(bq, f"SELECT source, id FROM {table(lane, 'events')} {not_heartbeat}")
    assert {(r["source"], r["id"]) for r in stored} == truth["events"]  # and one row each
    late = query(bq, f"SELECT source, id FROM {table(lane, 'late_events')}")
    assert sorted((r["source"], r["id"]) for r in late) == sorted(truth["too_late"])
    for name in ("duplicate_events", "dead_letter"):
        copies = query(bq, f"SELECT message_id, COUNT(*) AS n FROM {table(lane, name)} "
                           f"GROUP BY message_id HAVING n > 1")
        assert copies == [], f"{name} recorded twice: {copies[:3]}"


@pytest.mark.parametrize("stops", [
    (signal.SIGTERM,), (signal.SIGKILL,), (signal.SIGTERM, signal.SIGKILL),
], ids=["sigterm", "sigkill", "sigterm-then-sigkill"])
def test_a_stream_stopped_mid_flight_and_restarted_loses_nothing_and_counts_nothing_twice(
        lane, bq_client, tmp_path, stops):
    truth = restart_stream(seed=20261201 + len(stops), events=800)
    log = tmp_path / "stream.log"
    publishing = Publishing(lane, truth["payloads"])
    job = Stream(lane, log, "restart-0")
    publishing.start()
    try:
        for n, signum in enumerate(stops):
            written = landed(bq_client, lane)["total"]
            wait_for(lambda: landed(bq_client, lane), lambda seen: seen["total"] > written,
                     f"job {n} to write something")
            assert job.stop(signum) == (0 if signum == signal.SIGTERM else -signal.SIGKILL)
            job = Stream(lane, log, f"restart-{n + 1}", "--restore_open_windows")
        assert publishing.finished.wait(WAIT_SECONDS), "publishing did not finish"
        wait_for(lambda: (landed(bq_client, lane), usage_view(bq_client, lane)),
                 lambda seen: seen[0]["total"] >= truth["records"] and seen[1] == truth["usage"],
                 "every record and the exact usage", timeout=2 * WAIT_SECONDS)
        assert job.stop(signal.SIGTERM) == 0
    finally:
        publishing.stop()
        if job.process.poll() is None:
            job.process.kill()
    output = job.output()
    assert output.count("replaying Pub/Sub from the restart point") == len(stops), output
    assert_every_record_once(bq_client, lane, truth)


def test_sigterm_stops_the_stream_with_a_clear_message_when_pubsub_is_gone(
        local_stack, bq_client, tmp_path):
    port = _free_port()
    emulator = _spawn([str(_pubsub_launcher()), "--host=127.0.0.1", f"--port={port}"],
                      tmp_path / "pubsub.log", tmp_path, dict(os.environ))
    uid = uuid.uuid4().hex[:8]
    own = dataclasses.replace(local_stack, pubsub_port=port, dataset=f"gone_{uid}",
                              topic=f"gone-{uid}", subscription=f"gone-{uid}-sub")
    deadline = time.monotonic() + 30
    while True:
        try:
            provision(own)
            break
        except Exception:  # noqa: BLE001 - the emulator is still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    job = Stream(own, tmp_path / "stream.log", "gone-0")
    try:
        publishing = Publishing(own, [as_payload(event("cust-0001", "user.active",
                                                       {"user_id": "u-1"}))])
        publishing.start()
        wait_for(lambda: landed(bq_client, own), lambda seen: seen["events"] == 1,
                 "the job to run")
        publishing.stop()
        os.kill(emulator, signal.SIGKILL)
        code = job.stop(signal.SIGTERM)
    finally:
        if job.process.poll() is None:
            job.process.kill()
        if _alive(emulator):
            os.kill(emulator, signal.SIGKILL)
    last = job.output().strip().splitlines()[-1]
    # a clean stop, or a failure naming what went wrong: never a hang
    assert code in (0, 3), job.output()[-2000:]
    assert last.startswith("tallyflow stream: stopped") or (
        code == 3 and last.startswith("tallyflow stream: ")), last
