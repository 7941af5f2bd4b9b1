"""CloudEvents conformance end to end: SDK-written events through both pipelines.

The same events, written by the official `cloudevents` SDK, go to two lanes of
the local stack: one in structured mode (single events and CloudEvents
batches), one in binary mode (the Pub/Sub protocol binding), some messages of
each compressed (content-encoding gzip or zstd) as `tallyflow publish --compress`
does. The streaming pipeline runs on each, then the recompute re-reads each lane's stored `events`
rows. Every usage row must be byte-identical across the modes and the two
pipelines, and equal to the usage summed here from the SDK's own view of the
events; each required-attribute violation, sent in both modes, must be
dead-lettered with the same code, and so must a corrupt and an oversized
compressed message. Harness: tests/e2e/test_streaming_e2e.py.
"""
from __future__ import annotations

import dataclasses
import json
import time
import uuid
from decimal import Decimal

import pytest
import yaml
from cloudevents.v1.conversion import to_binary, to_json, to_structured
from cloudevents.v1.http import CloudEvent

from pipelines import recompute_usage
from schemas.encoding import CONTENT_ENCODING, compress
from schemas.events import Payload
from schemas.values import parse_rfc3339
from tallyflow.local.stack import provision
from tests.e2e.test_streaming_e2e import (HEARTBEAT_SOURCE, StreamJob, query, rfc3339, table,
                                          wait_for)
from tests.test_cloudevents import (BATCH, STRUCTURED, VIOLATIONS, expected_usage,
                                     in_both_modes)

NS = 1_000_000_000
METERS = {"meters": [
    {"key": "tokens", "event_type": "llm.completion", "aggregation": "SUM",
     "value_property": "$.tokens", "group_by": {"model": "$.model", "region": "@region"}},
    {"key": "completions", "event_type": "llm.completion", "aggregation": "COUNT"},
    {"key": "users", "event_type": "llm.completion", "aggregation": "UNIQUE_COUNT",
     "value_property": "$.user"},
]}
WINDOW_NS = 60 * NS


def sample(now_ns: int) -> list[CloudEvent]:
    """Twelve events of the last half minute: three customers, two models and regions."""
    start = now_ns - 30 * NS
    return [CloudEvent({
        "specversion": "1.0", "id": f"e2e-{n}", "source": "//conformance",
        "type": "llm.completion", "subject": f"cust-{n % 3}", "time": rfc3339(start + n * NS),
        "region": ("eu", "us")[n % 2]},
        {"tokens": f"{n}.125" if n % 3 else n, "model": ("small", "large")[n % 3 % 2],
         "user": f"u{n % 4}"}) for n in range(12)]


def violations(base: CloudEvent, now_ns: int) -> list[tuple[Payload, Payload, str]]:
    """(structured message, binary message, code) per violation of
    tests/test_cloudevents.py, FUTURE_TIME an hour ahead of now."""
    out = []
    for n, (name, value, code) in enumerate(VIOLATIONS):
        if code == "FUTURE_TIME":
            value = rfc3339(now_ns + 3600 * NS)
        event = CloudEvent({**base.get_attributes(), "id": f"bad-{n}"}, base.get_data())
        out.append((*in_both_modes(name, value, event), code))
    return out


BOUND = 100_000  # the job's --max_decompressed_bytes: small, so a small bomb exceeds it


def compressed(messages: list[tuple[bytes, dict]], encodings) -> list[tuple[bytes, dict]]:
    """Each message with its data compressed as the publisher does (None: left as it is)."""
    return [(data, attributes) if encoding is None else
            (compress(data, encoding), {**attributes, CONTENT_ENCODING: encoding})
            for (data, attributes), encoding in zip(messages, encodings)]


def compression_violations(base: CloudEvent) -> list[tuple[Payload, Payload, str]]:
    """A truncated gzip message and a zstd bomb past BOUND, in both modes."""
    out = []
    for n, (encoding, spoil, code) in enumerate((
            ("gzip", lambda packed, data: packed[:-5], "CORRUPT_COMPRESSION"),
            ("zstd", lambda packed, data: compress(data + b" " * BOUND, "zstd"),
             "DECOMPRESSED_TOO_LARGE"))):
        event = CloudEvent({**base.get_attributes(), "id": f"packed-{n}"}, base.get_data())
        pair = []
        for payload in in_both_modes("id", f"packed-{n}", event):
            packed = compress(payload.data, encoding)
            pair.append(payload._replace(data=spoil(packed, payload.data), attributes={
                **payload.attributes, CONTENT_ENCODING: encoding}))
        out.append((*pair, code))
    return out


def publish_all(lane, messages: list[tuple[bytes, dict]]) -> list[str]:
    publisher = lane.publisher_client()
    return [publisher.publish(lane.topic_path(), data, **attributes).result(timeout=30)
            for data, attributes in messages]


def streamed_usage(bq, lane, tmp_path, messages, accepted: int, rejected: int) -> tuple:
    """Runs the stream on `lane` until `accepted` events and `rejected` dead letters are
    stored; returns (the last pane of every usage key, dead-letter code per message id)."""
    meters = tmp_path / "meters.yaml"
    meters.write_text(yaml.safe_dump(METERS))
    # an hour of lateness: the second lane's job starts minutes after the events' time
    with StreamJob(lane, f"ce-{lane.topic}", "--meters", str(meters),
                   "--allowed_lateness", "1h", "--max_decompressed_bytes", str(BOUND)):
        ids = publish_all(lane, messages)

        def landed():
            return query(bq, f"""
                SELECT (SELECT COUNT(*) FROM {table(lane, 'events')}
                        WHERE source != '{HEARTBEAT_SOURCE}') AS events,
                       (SELECT COUNT(*) FROM {table(lane, 'dead_letter')}) AS dead,
                       (SELECT COALESCE(SUM(event_count), 0) FROM (
                          SELECT event_count FROM {table(lane, 'usage_panes')}
                          WHERE meter = 'completions'
                          QUALIFY ROW_NUMBER() OVER (PARTITION BY subject, window_start
                                                     ORDER BY pane_index DESC) = 1)) AS counted
                """)[0]

        wait_for(landed, lambda seen: seen == {"events": accepted, "dead": rejected,
                                               "counted": accepted}, "every message stored")
    panes = query(bq, f"""
        SELECT subject, meter, dimensions, FORMAT_TIMESTAMP('%Y-%m-%dT%H:%M:%SZ', window_start)
               AS window_start, value, event_count, fingerprint
        FROM {table(lane, 'usage_panes')}
        QUALIFY ROW_NUMBER() OVER (PARTITION BY subject, meter, dimensions, window_start
                                   ORDER BY pane_index DESC) = 1""")
    codes = {r["message_id"]: r["error_code"] for r in query(
        bq, f"SELECT message_id, error_code FROM {table(lane, 'dead_letter')}")}
    plain = [{**p, "value": format(Decimal(p["value"]).normalize(), "f")} for p in panes]
    return rows_text(plain), [codes.get(i) for i in ids]


def recomputed(bq, lane, tmp_path) -> list[str]:
    """The recompute of every window, from the lane's stored `events` rows (raw)."""
    stored = tmp_path / f"{lane.dataset}.jsonl"
    stored.write_text("".join(r["raw"] + "\n" for r in query(
        bq, f"SELECT raw FROM {table(lane, 'events')} WHERE source != '{HEARTBEAT_SOURCE}'")))
    out = tmp_path / f"{lane.dataset}-usage"
    recompute_usage.run(["--meters", str(tmp_path / "meters.yaml"), "--input", str(stored),
                         "--output-dir", str(out), "--window", "1m"])
    return rows_text(json.loads(line) for line in (out / "usage.jsonl").read_text().splitlines())


def rows_text(rows) -> list[str]:
    """Usage rows as sorted JSON lines, dimensions as canonical JSON text (BigQuery may
    return them as text, the usage file holds an object)."""
    def canonical(dimensions) -> str:
        if isinstance(dimensions, str):
            dimensions = json.loads(dimensions)
        return json.dumps(dimensions, sort_keys=True, separators=(",", ":"))

    return sorted(json.dumps({**row, "dimensions": canonical(row["dimensions"])}, sort_keys=True)
                  for row in rows)


@pytest.mark.timeout(900)
def test_every_mode_bills_byte_identically_through_both_pipelines(local_stack, bq_client,
                                                                  tmp_path, monkeypatch):
    now_ns = time.time_ns()
    events = sample(now_ns)
    bad = violations(events[0], now_ns) + compression_violations(events[0])
    structured_messages = [(to_structured(e)[1], {**STRUCTURED, "ce-time": e["time"]})
                           for e in events[:4]]
    structured_messages += compressed([(b"[" + to_json(a) + b"," + to_json(b) + b"]",
                                        {**BATCH, "ce-time": a["time"]})
                                       for a, b in zip(events[4::2], events[5::2])],
                                      [None, "gzip", "zstd", None])
    binary_messages = compressed([to_binary(e)[::-1] for e in events],
                                 [None, "gzip", "zstd"] * 4)
    results = {}
    for mode, messages in (
            ("structured", structured_messages + [(s.data, s.attributes) for s, _, _ in bad]),
            ("binary", binary_messages + [(b.data, b.attributes) for _, b, _ in bad])):
        uid = uuid.uuid4().hex[:8]
        own = dataclasses.replace(local_stack, dataset=f"ce_{uid}", topic=f"ce-{uid}",
                                  subscription=f"ce-{uid}-sub")
        provision(own)
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", own.pubsub_host)
        usage, codes = streamed_usage(bq_client, own, tmp_path, messages, len(events), len(bad))
        results[mode] = usage, codes[-len(bad):], recomputed(bq_client, own, tmp_path)

    (s_usage, s_codes, s_recomputed), (b_usage, b_codes, b_recomputed) = (
        results["structured"], results["binary"])
    assert s_codes == b_codes == [code for *_, code in bad]
    assert b_usage == s_usage
    assert b_recomputed == s_recomputed
    expected = expected_usage(events, WINDOW_NS)
    for rows in (b_usage, b_recomputed):
        got = {(row["subject"], row["meter"], row["dimensions"],
                parse_rfc3339(row["window_start"])): (row["value"], row["event_count"])
               for row in map(json.loads, rows)}
        assert got == expected
    # the stream and the recompute agree row by row: value, count and fingerprint
    key = ("subject", "meter", "window_start", "value", "event_count", "fingerprint")
    assert sorted(tuple(json.loads(r)[k] for k in key) for r in b_usage) == sorted(
        tuple(json.loads(r)[k] for k in key) for r in b_recomputed)

