"""`tallyflow stream` end to end: the real Pub/Sub emulator, local-bigquery, the DirectRunner.

Each test gets its own topic, subscription and BigQuery dataset on the
session's local stack, runs `pipelines.streaming_usage.build(...)` in this
process with `pipeline.run()`, publishes, polls BigQuery until the expected
rows are there (bounded), then `result.cancel()`s.

Making a wall-clock runner deterministic:

* The DirectRunner's Pub/Sub watermark is the wall clock, so event times are
  generated relative to `time.time_ns()` at publish time: on-time events
  within seconds of now, late ones 2-4 minutes old (inside `--allowed_lateness`),
  too-late ones more than window + allowed lateness + 1 minute old. Every class
  has at least a minute of margin against the publish-to-ingest delay.
* Its single worker thread blocks in an idle Pub/Sub pull for up to 30 s, and
  processing-time timers (early panes, write batching) and `cancel()` wait for
  it. A heartbeat thread publishes an unmetered event every second while a job
  runs (source `//tests/heartbeat`, excluded from every count), so pulls return
  at once and results appear within seconds.
* The DirectRunner acknowledges a pull before processing it and `cancel()` is
  not a drain: jobs are only cancelled after everything published is visible in
  BigQuery, so nothing but heartbeats can be in flight.
* The expected usage is computed independently of tallyflow's parsing and
  aggregation: times with `datetime`, values as `Decimal` from the generator's
  ground truth, grouping in DuckDB (`tests/reference.py`), fingerprints from
  their definition.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from decimal import Decimal

import apache_beam as beam
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import streaming_usage
from tallyflow.local.stack import provision
from tallyflow.local.publish import Outgoing, Progress, publish
from tallyflow.local.synthetic import (CONFLICT, DUPLICATE, INVALID, LATE, ON_TIME, TOO_LATE,
                                       SyntheticConfig, generate)
from tests.conftest import EXAMPLE_METERS
from tests.reference import expected_usage, fingerprint

NS = 1_000_000_000
MINUTE_NS = 60 * NS
WINDOW, WINDOW_NS = "1m", MINUTE_NS
LATENESS, LATENESS_NS = "5m", 5 * MINUTE_NS
HEARTBEAT_SOURCE = "//tests/heartbeat"
METERS = yaml.safe_load(EXAMPLE_METERS.read_text())["meters"]
METER_KEYS = {m["key"] for m in METERS}
WAIT_SECONDS = 120  # bound on any single wait for results


# ---------------------------------------------------------------- the stack


@pytest.fixture
def lane(local_stack, monkeypatch):
    """A private topic, subscription and dataset on the session's stack."""
    uid = uuid.uuid4().hex[:8]
    lane = dataclasses.replace(local_stack, dataset=f"stream_{uid}", topic=f"stream-{uid}",
                               subscription=f"stream-{uid}-sub")
    provision(lane)
    # Beam's DirectRunner builds its own Pub/Sub client, which finds the emulator here.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", lane.pubsub_host)
    return lane


class StreamJob:
    """The streaming pipeline running in this process on the DirectRunner."""

    def __init__(self, lane, job_id: str, *extra: str):
        self.lane, self.job_id = lane, job_id
        argv = ["--subscription", lane.subscription_path(), "--meters", str(EXAMPLE_METERS),
                "--bigquery_project", lane.project, "--bigquery_dataset", lane.dataset,
                "--bigquery_endpoint", lane.bigquery_endpoint,
                "--bigquery_storage_endpoint", lane.bigquery_grpc_address, "--window", WINDOW,
                "--allowed_lateness", LATENESS, "--early_firing_seconds", "1",
                "--dedup_horizon", "48h", *extra]
        # as streaming_usage.run() does, minus its blocking wait
        options = PipelineOptions(argv, streaming=True, save_main_session=False)
        self.pipeline = beam.Pipeline(options=options)
        streaming_usage.build(self.pipeline,
                              options.view_as(streaming_usage.StreamingUsageOptions), job_id)
        self.result = None
        self._publisher = lane.publisher_client()
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self):
        self.result = self.pipeline.run()
        self._heartbeat.start()
        return self

    def __exit__(self, *exc):
        self.cancel()

    def cancel(self) -> None:
        """Cancels while heartbeats still flow (so the blocked pull returns)."""
        if self._stop.is_set():
            return
        try:
            self.result.cancel()
        finally:
            self._stop.set()
            self._heartbeat.join(timeout=10)
        assert str(self.result.state) == "CANCELLED"
        assert not self._heartbeat.is_alive()

    def _beat(self):
        beat = 0
        while not self._stop.is_set():
            beat += 1
            event = {"specversion": "1.0", "id": f"{self.job_id}-{beat}",
                     "source": HEARTBEAT_SOURCE, "type": "tests.heartbeat",
                     "subject": "heartbeat", "time": rfc3339(time.time_ns())}
            self._publisher.publish(self.lane.topic_path(), json.dumps(event).encode()).result(
                timeout=10)
            self._stop.wait(1.0)


def publish_messages(lane, payloads: list[bytes]) -> list[str]:
    """Publishes in order with the ce-time attribute, as `tallyflow publish` does."""
    return publish(lane.publisher_client(), lane.topic_path(),
                   [Outgoing.of(p) for p in payloads], "ce-time",
                   Progress(len(payloads), "published", stream=io.StringIO()))


def query(bq, sql: str) -> list[dict]:
    return [dict(row.items()) for row in bq.query(sql).result()]


def table(lane, name: str) -> str:
    return f"`{lane.project}.{lane.dataset}.{name}`"


def wait_for(observe, done, what: str, timeout: float = WAIT_SECONDS):
    """Polls `observe()` until `done(observation)`; fails with the last observation."""
    deadline = time.monotonic() + timeout
    while True:
        seen = observe()
        if done(seen):
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last seen: "
                        f"{str(seen)[:2000]}")
        time.sleep(2)


def landed(bq, lane) -> dict:
    """How many records the pipeline has written where (heartbeats left out)."""
    row = query(bq, f"""
        SELECT
          (SELECT COUNT(*) FROM {table(lane, 'events')}
           WHERE source != '{HEARTBEAT_SOURCE}') AS events,
          (SELECT COUNT(*) FROM {table(lane, 'duplicate_events')}
           WHERE source != '{HEARTBEAT_SOURCE}') AS duplicates,
          (SELECT COUNT(*) FROM {table(lane, 'dead_letter')}) AS dead_letters""")[0]
    return {**row, "total": row["events"] + row["duplicates"] + row["dead_letters"]}


# ---------------------------------------------------------------- the independent truth


def rfc3339(time_ns: int) -> str:
    return dt.datetime.fromtimestamp(time_ns // 1000 / 1e6, dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> int:
    """RFC 3339 with offset -> ns since the epoch (the generator writes milliseconds)."""
    instant = dt.datetime.fromisoformat(text)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (instant - epoch) // dt.timedelta(microseconds=1) * 1000


def canonical(dimensions: str) -> str:
    return json.dumps(json.loads(dimensions), sort_keys=True)


def expected_rows(first_copies: list[dict]) -> dict:
    """{(subject, meter, dimensions, window_start_ns): (value, event_count, fingerprint)}."""
    accepted = [{"source": e["source"], "id": e["id"], "subject": e["subject"],
                 "type": e["type"], "time_ns": parse_time(e["time"]), "data": e.get("data")}
                for e in first_copies]
    values = expected_usage(accepted, METERS, WINDOW_NS)
    identities = defaultdict(set)
    for event in accepted:
        start = event["time_ns"] - event["time_ns"] % WINDOW_NS
        for meter in METERS:
            if meter["event_type"] == event["type"]:
                dimensions = {name: event["data"].get(path[2:])
                              for name, path in (meter.get("group_by") or {}).items()}
                identities[(event["subject"], meter["key"], json.dumps(dimensions, sort_keys=True),
                            start)].add((event["source"], event["id"]))
    rows = {}
    for (subject, meter, dimensions, start), (value, count) in values.items():
        key = (subject, meter, canonical(dimensions), start)
        assert len(identities[key]) == count
        rows[key] = (value, count, fingerprint(identities[key]))
    return rows


def usage_view(bq, lane) -> dict:
    """The `usage` view in the shape of `expected_rows`, checking window ends on the way."""
    rows = {}
    for row in query(bq, f"SELECT * FROM {table(lane, 'usage')}"):
        start = int(row["window_start"].timestamp()) * NS
        assert int(row["window_end"].timestamp()) * NS == start + WINDOW_NS
        assert row["value_bignumeric"] is None
        key = (row["subject"], row["meter"], canonical(row["dimensions"]), start)
        assert key not in rows, f"two usage rows for {key}"
        rows[key] = (row["value"], row["event_count"], row["fingerprint"])
    return rows


def describe_difference(actual: dict, expected: dict) -> str:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = sorted(k for k in set(actual) & set(expected) if actual[k] != expected[k])
    return (f"{len(missing)} missing {missing[:3]}, {len(extra)} unexpected {extra[:3]}, "
            f"{len(wrong)} wrong " + "; ".join(f"{k}: {actual[k]} != {expected[k]}"
                                               for k in wrong[:3]))


def assert_usage_equals(actual: dict, expected: dict) -> None:
    assert actual == expected, describe_difference(actual, expected)


# ---------------------------------------------------------------- streams


def synthetic(seed: int, events: int, span_seconds: float, batch_size: int = 3,
              **fractions) -> list:
    """A generated stream whose emission clock is centred on now, so on-time events are
    seconds from now, late ones minutes old and too-late ones older than the window
    + allowed lateness (each with at least a minute of margin)."""
    config = SyntheticConfig(seed=seed, customers=6, events=events, rate=events / span_seconds,
                             start_ns=time.time_ns() - int(span_seconds * NS / 2), batch_size=batch_size,
                             window_ns=WINDOW_NS, allowed_lateness_ns=LATENESS_NS, **fractions)
    return generate(config)


def labels_of(messages) -> list:
    return [label for message in messages for label in message.labels]


def event(subject: str, event_type: str, data: dict, time_ns: int | None = None,
          source: str = "//tests/e2e") -> dict:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": source, "type": event_type,
            "subject": subject, "time": rfc3339(time_ns or time.time_ns()), "data": data}


def conflicting_copy(original: dict) -> dict:
    """The same identity with a payload that would bill differently."""
    data = dict(original["data"])
    for name in ("bytes_out", "input_tokens", "connections", "gb"):
        if name in data:
            data[name] = str(Decimal(data[name]) + 1000)
            return {**original, "data": data}
    if "user_id" in data:
        return {**original, "data": {**data, "user_id": data["user_id"] + "-other"}}
    return {**original, "subject": original["subject"] + "-other"}


def as_payload(document) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


# ---------------------------------------------------------------- tests


def test_messy_stream_gives_exact_usage_and_accounts_for_every_record(lane, bq_client):
    messages = synthetic(seed=20261122, events=300, span_seconds=20, duplicate_fraction=0.10,
                         late_fraction=0.12, too_late_fraction=0.06, invalid_fraction=0.08)
    labels = labels_of(messages)
    kinds = Counter(label.kind for label in labels)
    assert all(kinds[kind] >= 5 for kind in (ON_TIME, LATE, TOO_LATE, DUPLICATE, INVALID)), kinds
    assert any(len(m.labels) > 1 for m in messages)  # CloudEvents batches
    first_copies = [l.event for l in labels if l.kind in (ON_TIME, LATE)]
    too_late = [l.event for l in labels if l.kind == TOO_LATE]

    with StreamJob(lane, "messy-1") as job:
        publish_messages(lane, [m.data for m in messages])
        wait_for(lambda: landed(bq_client, lane), lambda seen: seen["total"] >= len(labels),
                 f"{len(labels)} records in events, duplicate_events and dead_letter")

        # Conflicting copies (first copy wins) go out only now: Pub/Sub does not order
        # messages, and "first" is the first to arrive.
        conflicts = [conflicting_copy(e) for e in first_copies[:4]]
        new = event("cust-0001", "api.request", {"method": "PATCH", "bytes_out": 17})
        batch = [conflicts[3], new, first_copies[5], {**new, "specversion": "0.3", "id": "x"}]
        late_duplicate = too_late[0]
        publish_messages(lane, [as_payload(c) for c in conflicts[:3]]
                         + [as_payload(batch), as_payload(late_duplicate)])
        records = len(labels) + 3 + len(batch) + 1
        first_copies.append(new)
        expected = expected_rows(first_copies)
        assert {key[1] for key in expected} == METER_KEYS
        wait_for(lambda: (landed(bq_client, lane), usage_view(bq_client, lane)),
                 lambda seen: seen[0]["total"] >= records and seen[1] == expected,
                 "every record and the exact usage")
        job.cancel()  # returns, with the job CANCELLED and the heartbeats stopped

    # the usage view equals the independent computation, and nothing too late is in it
    assert_usage_equals(usage_view(bq_client, lane), expected)

    # every record published is in exactly one of events, duplicate_events, dead_letter
    counts = landed(bq_client, lane)
    identities = {(e["source"], e["id"]) for e in first_copies + too_late}
    duplicates = kinds[DUPLICATE] + kinds[CONFLICT] + len(conflicts) + 1 + 1
    assert counts == {"events": len(identities), "duplicates": duplicates,
                      "dead_letters": kinds[INVALID] + 1, "total": records}
    stored = query(bq_client, f"SELECT source, id FROM {table(lane, 'events')} "
                              f"WHERE source != '{HEARTBEAT_SOURCE}'")
    assert {(r["source"], r["id"]) for r in stored} == identities  # one row each

    # conflicts are flagged, exact copies are not
    flagged = query(bq_client, f"SELECT source, id, conflict FROM "
                               f"{table(lane, 'duplicate_events')}")
    assert {(r["source"], r["id"]) for r in flagged if r["conflict"]} == {
        (c["source"], c["id"]) for c in conflicts}
    # dead letters carry the error code the generator promised
    codes = Counter(r["error_code"] for r in query(
        bq_client, f"SELECT error_code FROM {table(lane, 'dead_letter')}"))
    assert codes == Counter([l.reason for l in labels if l.kind == INVALID]
                            + ["UNSUPPORTED_SPECVERSION"])

    # too-late events: recorded in late_events (and in events), never in usage
    late_rows = query(bq_client, f"SELECT source, id, lateness_seconds, "
                                 f"UNIX_SECONDS(window_end) AS window_end FROM "
                                 f"{table(lane, 'late_events')}")
    assert sorted((r["source"], r["id"]) for r in late_rows) == sorted(
        (e["source"], e["id"]) for e in too_late)
    for row in late_rows:
        assert row["lateness_seconds"] > 0
    too_late_windows = {parse_time(e["time"]) // WINDOW_NS * WINDOW_NS for e in too_late}
    usage_windows = {key[3] for key in expected}
    assert too_late_windows - usage_windows  # some windows only too-late events touched ...
    assert not {key[3] for key in usage_view(bq_client, lane)} - usage_windows  # ... stay empty


def test_restart_with_restore_open_windows_keeps_usage_exact(lane, bq_client):
    # Late events here are 2-4 min old; the pipeline allows 10 min, so the second
    # half, published a minute later, is still comfortably within lateness.
    messages = synthetic(seed=20261123, events=180, span_seconds=20, duplicate_fraction=0.12,
                         late_fraction=0.2)
    half = len(messages) // 2
    first, second = messages[:half], messages[half:]
    first_labels, second_labels = labels_of(first), labels_of(second)
    originals = [l.event for l in first_labels if l.kind in (ON_TIME, LATE)]
    # second half: the generator's own redeliveries of first-half events, plus conflicts
    # and exact copies of them, and new events in the first half's windows
    first_ids = {(e["source"], e["id"]) for e in originals}
    assert any(l.kind == DUPLICATE and (l.event["source"], l.event["id"]) in first_ids
               for l in second_labels)
    extra = ([conflicting_copy(e) for e in originals[:3]] + originals[3:6]
             + [event(e["subject"], e["type"], e["data"], parse_time(e["time"]) + 1_000_000)
                for e in originals[6:12]])
    lateness = ["--allowed_lateness", "10m"]

    with StreamJob(lane, "restart-1", *lateness) as job:
        publish_messages(lane, [m.data for m in first])
        expected_first = expected_rows(originals)
        wait_for(lambda: (landed(bq_client, lane), usage_view(bq_client, lane)),
                 lambda seen: seen[0]["total"] >= len(first_labels)
                 and seen[1] == expected_first, "the first half")
        job.cancel()

    # While no job runs, the second half piles up in the subscription: the restarted
    # job must replay the open windows before it lets this backlog through, or it
    # would accept redeliveries of first-half events a second time.
    publish_messages(lane, [m.data for m in second] + [as_payload(e) for e in extra])
    with StreamJob(lane, "restart-2", *lateness, "--restore_open_windows"):
        everything = originals + [l.event for l in second_labels if l.kind in (ON_TIME, LATE)]
        everything += extra[6:]
        expected = expected_rows(everything)
        assert {key[1] for key in expected} == METER_KEYS
        # the second half really lands in windows the first job had already reported
        assert {k[3] for k in expected_first} & {
            parse_time(e["time"]) // WINDOW_NS * WINDOW_NS for e in extra[6:]}
        records = len(first_labels) + len(second_labels) + len(extra)
        wait_for(lambda: (landed(bq_client, lane), usage_view(bq_client, lane)),
                 lambda seen: seen[0]["total"] >= records and seen[1] == expected,
                 "the second half")

    assert_usage_equals(usage_view(bq_client, lane), expected)
    counts = landed(bq_client, lane)
    # the restarted job remembered the first half's identities: no event stored twice
    assert counts["events"] == len({(e["source"], e["id"]) for e in everything})
    assert counts["total"] == records
    jobs = query(bq_client, f"SELECT job_id, COUNT(*) AS n FROM {table(lane, 'events')} "
                            f"WHERE source != '{HEARTBEAT_SOURCE}' GROUP BY job_id")
    assert {r["job_id"] for r in jobs} == {"restart-1", "restart-2"}


def test_a_redelivered_message_does_not_change_any_total(lane, bq_client):
    tokens = event("cust-0042", "llm.completion",
                   {"model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300,
                    "cost_usd": "0.000360000"})
    request = event("cust-0042", "api.request", {"method": "GET", "bytes_out": 4096})
    user = event("cust-0042", "user.active", {"user_id": "u-1"})
    once = [as_payload(tokens), as_payload([request, user])]
    with StreamJob(lane, "redeliver-1"):
        publish_messages(lane, once)
        expected = expected_rows([tokens, request, user])
        wait_for(lambda: usage_view(bq_client, lane), lambda seen: seen == expected,
                 "the first delivery")
        # exactly the same bytes again, as Pub/Sub redelivers them
        publish_messages(lane, once + once)
        wait_for(lambda: landed(bq_client, lane), lambda seen: seen["duplicates"] >= 6,
                 "the redeliveries")
        time.sleep(3)  # a few more pane and write cycles: nothing may change

    assert_usage_equals(usage_view(bq_client, lane), expected)
    assert landed(bq_client, lane) == {"events": 3, "duplicates": 6, "dead_letters": 0,
                                       "total": 9}
    flagged = query(bq_client, f"SELECT COUNTIF(conflict) AS n FROM "
                               f"{table(lane, 'duplicate_events')}")
    assert flagged == [{"n": 0}]
