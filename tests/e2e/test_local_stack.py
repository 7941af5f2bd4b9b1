"""The local stack on real emulators: resources from `schemas/`, round trips, teardown."""
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from google.cloud import bigquery

from tallyflow.local import stack as stack_module
from tallyflow.local import publish
from tallyflow.local.stack import MAX_DELIVERY_ATTEMPTS, StackError, up
from schemas.encoding import decode_content
from schemas.tables import TABLES, VIEWS

ROOT = Path(__file__).resolve().parents[2]


def standard(field: bigquery.SchemaField):
    """The API answers legacy type names (INTEGER for INT64): compare in standard SQL."""
    return (field.name, field.to_standard_sql().type.type_kind, field.mode, field.description)


def event_row(subject: str, event_id: str) -> dict:
    return {"source": "//test", "id": event_id, "type": "api.request", "subject": subject,
            "time": "2026-11-02T09:00:00Z", "raw": "{}", "ingest_time": "2026-11-02T09:00:01Z"}


def usage_row(subject: str, window_start: str, value: str, **extra) -> dict:
    hour = int(window_start[11:13])
    return {"subject": subject, "meter": "api_requests", "dimensions": "{}",
            "window_start": window_start,
            "window_end": f"{window_start[:11]}{hour + 1:02d}:00:00Z",
            "value": value, "event_count": int(value), "fingerprint": f"fp-{value}", **extra}


def pane(subject, window_start, value, index):
    return usage_row(subject, window_start, value, pane_timing="EARLY" if index == 0 else "ON_TIME",
                     pane_index=index, is_final=index > 0, emitted_at=window_start,
                     row_id=f"{subject}-{window_start}-{index}")


def recomputed(subject, window_start, value, revision):
    return usage_row(subject, window_start, value, revision=revision, run_id=f"run-{revision}",
                     recomputed_at="2026-11-03T00:00:00Z", period_start="2026-11-02T00:00:00Z",
                     period_end="2026-11-03T00:00:00Z")


def committed_run(revision, period_start, period_end, committed_at):
    return {"run_id": f"run-{revision}", "revision": revision, "period_start": period_start,
            "period_end": period_end, "window_seconds": 3600, "reason": "test",
            "started_at": committed_at, "committed_at": committed_at}


def listening_ports() -> set[int]:
    """Every TCP port in LISTEN state on this machine, from /proc (no psutil needed)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A":
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def live_processes() -> dict[int, str]:
    """pid -> command line of every process that is not a zombie (exited, awaiting its reaper)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError):
                continue
            if state != "Z":
                found[int(entry.name)] = command
    return found


def tallyflow(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tallyflow.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_every_table_has_the_schema_partitioning_and_clustering_of_schemas(local_stack,
                                                                          bq_client):
    dataset = f"{local_stack.project}.{local_stack.dataset}"
    listed = {t.table_id for t in bq_client.list_tables(dataset)}
    assert listed == {t.name for t in TABLES} | {v.name for v in VIEWS}
    for table in TABLES:
        actual = bq_client.get_table(f"{dataset}.{table.name}")
        expected = table.bigquery_schema()
        assert [standard(f) for f in actual.schema] == [standard(f) for f in expected]
        assert actual.time_partitioning.type_ == "DAY"
        assert actual.time_partitioning.field == table.partition_field
        assert actual.clustering_fields == list(table.clustering)
        assert actual.description == table.description


def test_the_ddl_of_the_deploy_guide_creates_the_same_tables(local_stack, bq_client):
    """docs/deploy.md creates BigQuery's tables with the DDL of `schemas/tables.py`: run
    as documented, into a dataset of its own, it must create what `up` creates."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    program = re.search(r'python -c "(.*?)" \\\n', guide, re.S).group(1)
    project, dataset = local_stack.project, "ddl_test"
    bq_client.create_dataset(f"{project}.{dataset}", exists_ok=True)
    ddl = subprocess.run(
        [sys.executable, "-c", program.replace("$PROJECT", project).replace(
            "'metering'", f"'{dataset}'")],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    bq_client.query(ddl).result()
    for table in TABLES:
        made, wanted = (bq_client.get_table(f"{project}.{d}.{table.name}")
                        for d in (dataset, local_stack.dataset))
        assert [standard(f) for f in made.schema] == [standard(f) for f in wanted.schema]
        assert made.time_partitioning.field == wanted.time_partitioning.field
        assert made.clustering_fields == wanted.clustering_fields
        assert made.description == wanted.description
    # the emulator keeps a DDL view's query re-rendered from its parse: ask it instead
    (view,) = VIEWS
    assert bq_client.get_table(f"{project}.{dataset}.{view.name}").description == \
        view.description
    window = "2026-11-02T09:00:00Z"
    assert bq_client.insert_rows_json(f"{project}.{dataset}.usage_panes", [
        pane("ddl-test", window, "3", 0), pane("ddl-test", window, "5", 1)]) == []
    rows = bq_client.query(f"SELECT value, origin FROM `{project}.{dataset}.{view.name}`").result()
    assert [(str(r.value), r.origin) for r in rows] == [("5", "stream")]


def test_usage_view_prefers_the_latest_revision_then_the_latest_pane(local_stack, bq_client):
    project, dataset = local_stack.project, local_stack.dataset
    view = bq_client.get_table(f"{project}.{dataset}.usage")
    assert view.table_type == "VIEW"
    assert view.view_query == VIEWS[0].query(project, dataset)
    streamed, both = "2026-11-02T09:00:00Z", "2026-11-02T10:00:00Z"
    assert bq_client.insert_rows_json(f"{project}.{dataset}.usage_panes", [
        pane("view-test", streamed, "3", 0), pane("view-test", streamed, "5", 1),
        pane("view-test", both, "7", 0)]) == []
    assert bq_client.insert_rows_json(f"{project}.{dataset}.usage_recomputed", [
        recomputed("view-test", both, "8", 1), recomputed("view-test", both, "9", 2),
        recomputed("view-test", both, "10", 3)]) == []
    # run 3 never committed (no recompute_runs row): its rows stay invisible
    assert bq_client.insert_rows_json(f"{project}.{dataset}.recompute_runs", [
        committed_run(1, "2026-11-02T10:00:00Z", "2026-11-02T11:00:00Z", "2026-11-03T00:00:00Z"),
        committed_run(2, "2026-11-02T10:00:00Z", "2026-11-02T11:00:00Z", "2026-11-03T01:00:00Z"),
    ]) == []
    rows = bq_client.query(
        f"SELECT window_start, value, origin FROM `{project}.{dataset}.usage` "
        "WHERE subject = 'view-test' ORDER BY window_start").result()
    assert [(r.window_start.isoformat(), str(r.value), r.origin) for r in rows] == [
        ("2026-11-02T09:00:00+00:00", "5", "stream"),
        ("2026-11-02T10:00:00+00:00", "9", "recompute")]


def test_a_row_inserted_twice_with_one_insert_id_counts_once(local_stack, bq_client):
    table = f"{local_stack.project}.{local_stack.dataset}.events"
    for row_ids in (["insert-a"], ["insert-a"], ["insert-b"]):
        assert bq_client.insert_rows_json(table, [event_row("dedup-test", row_ids[0])],
                                          row_ids=row_ids) == []
    rows = bq_client.query(f"SELECT id, COUNT(*) AS n FROM `{table}` "
                           "WHERE subject = 'dedup-test' GROUP BY id ORDER BY id").result()
    assert [(r.id, r.n) for r in rows] == [("insert-a", 1), ("insert-b", 1)]


def test_analyst_query_through_the_bq_command_line_tool(local_stack, bq_client, tmp_path):
    table = f"{local_stack.project}.{local_stack.dataset}.events"
    assert bq_client.insert_rows_json(table, [event_row("bq-cli-test", "cli-1")]) == []
    done = subprocess.run(
        ["bq", f"--api={local_stack.bigquery_endpoint}", f"--project_id={local_stack.project}",
         "--oauth_access_token=dummy", "query", "--use_legacy_sql=false", "--format=json",
         f"SELECT subject, id FROM `{table}` WHERE subject = 'bq-cli-test'"],
        env={**os.environ, "CLOUDSDK_CONFIG": str(tmp_path)}, capture_output=True, text=True,
        timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"subject": "bq-cli-test", "id": "cli-1"}]


def test_published_jsonl_comes_back_with_its_timestamp_attribute(local_stack, pubsub,
                                                                  tmp_path):
    pubsub.drain()
    marker = uuid.uuid4().hex
    single = {"specversion": "1.0", "id": f"{marker}-1", "source": "//test",
              "type": "user.active", "subject": "acme", "time": "2026-11-02T10:17:45.5+01:00",
              "data": {"user_id": "u1"}}
    batch = [dict(single, id=f"{marker}-2", time="2026-11-02T09:30:00Z"),
             dict(single, id=f"{marker}-3", time="2026-11-02T09:10:00.123456789Z")]
    lines = [json.dumps(single), json.dumps(batch), f'{{"id": "{marker}-broken"']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n\n")
    assert publish.main([str(tmp_path / "in.jsonl"), "--run-dir", str(local_stack.run_dir)]) == 0
    received = {m.message.data.decode(): dict(m.message.attributes)
                for m in pubsub.pull(count=3)}
    assert received == {lines[0]: {"ce-time": "2026-11-02T09:17:45.5Z"},
                        lines[1]: {"ce-time": "2026-11-02T09:10:00.123Z"},
                        lines[2]: {}}


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_compressed_messages_come_back_marked_and_decode_to_the_lines(local_stack, pubsub,
                                                                      tmp_path, encoding):
    pubsub.drain()
    event = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "//test",
             "type": "user.active", "subject": "acme", "time": "2026-11-02T09:30:00Z",
             "data": {"user_id": "u" * 500}}
    lines = [json.dumps([dict(event, id=f"{event['id']}-{n}") for n in range(10)]), "not json"]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    assert publish.main([str(tmp_path / "in.jsonl"), "--run-dir", str(local_stack.run_dir),
                         "--compress", encoding]) == 0
    received = [m.message for m in pubsub.pull(count=2)]
    decoded = {decode_content(m.data, m.attributes, 2 ** 20)[0].decode(): dict(m.attributes)
               for m in received}
    assert decoded == {lines[0]: {"ce-time": "2026-11-02T09:30:00Z",
                                  "content-encoding": encoding},
                       lines[1]: {"content-encoding": encoding}}
    assert len(received[0].data + received[1].data) < len(lines[0]) / 5


def test_synthetic_stream_arrives_whole(local_stack, pubsub, tmp_path):
    pubsub.drain()
    labels = tmp_path / "labels.jsonl"
    assert publish.main(["--synthetic", "--run-dir", str(local_stack.run_dir), "--seed", "5",
                         "--events", "300", "--batch-size", "4", "--duplicate-fraction", "0.1",
                         "--invalid-fraction", "0.1", "--labels", str(labels)]) == 0
    truth = [json.loads(line) for line in labels.read_text().splitlines()]
    message_ids = {label["message_id"] for label in truth}
    received = pubsub.pull(count=len(message_ids))
    assert {m.message.message_id for m in received} == message_ids
    events = sum(len(d) if isinstance(d, list) else 1 for d in
                 (_json_or_none(m.message.data) for m in received) if d is not None)
    malformed = sum(1 for label in truth if label["reason"] == "MALFORMED_JSON")
    assert events + malformed == len(truth) == 300


def _json_or_none(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return None


def test_an_unacknowledgeable_message_ends_in_the_dead_letter_subscription(local_stack,
                                                                           pubsub):
    pubsub.drain()
    pubsub.drain(local_stack.dead_letter_subscription)
    pubsub.publish(b"poison", **{"ce-time": "not a time"})
    for attempt in range(1, MAX_DELIVERY_ATTEMPTS + 1):
        delivered = pubsub.pull(count=1, ack=False)
        assert [m.delivery_attempt for m in delivered] == [attempt]
        pubsub.nack(delivered)
    # The emulator forwards it when a delivery beyond the limit is due, i.e. on the next pull.
    assert pubsub.pull(count=1, wait=1) == []
    dead = pubsub.pull(local_stack.dead_letter_subscription, count=1)
    assert [m.message.data for m in dead] == [b"poison"]
    assert dead[0].message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == str(
        MAX_DELIVERY_ATTEMPTS)


def test_up_again_reuses_the_running_stack(local_stack):
    assert up(local_stack.run_dir, progress=lambda message: None) == local_stack


def test_an_explicit_port_in_use_is_named(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StackError, match=f"port {port} .*--bigquery-port.* in use"):
            up(tmp_path, bigquery_port=port, progress=lambda message: None)
    assert not (tmp_path / stack_module.STATE_FILE).exists()


def test_missing_java_is_named(tmp_path):
    done = tallyflow("local", "up", "--run-dir", str(tmp_path),
                     env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == 3
    assert done.stderr.strip() == ("tallyflow local up: Java is not installed "
                                   "(the Pub/Sub emulator needs `java` on PATH)")


def test_command_line_up_status_env_down_leaves_nothing_behind(tmp_path):
    run_dir = tmp_path / "cli-stack"
    started = tallyflow("local", "up", "--run-dir", str(run_dir))
    assert started.returncode == 0, started.stderr
    stack = json.loads((run_dir / "stack.json").read_text())
    ports = {stack["pubsub_port"], stack["bigquery_port"], stack["bigquery_grpc_port"]}
    assert ports <= listening_ports()
    assert tallyflow("local", "status", "--run-dir", str(run_dir)).returncode == 0
    exports = tallyflow("local", "env", "--run-dir", str(run_dir)).stdout.split()
    assert exports == ["export", f"PUBSUB_EMULATOR_HOST=127.0.0.1:{stack['pubsub_port']}",
                       f"BIGQUERY_EMULATOR_HOST=http://127.0.0.1:{stack['bigquery_port']}",
                       f"BIGQUERY_STORAGE_EMULATOR_HOST=127.0.0.1:{stack['bigquery_grpc_port']}",
                       "GOOGLE_CLOUD_PROJECT=tallyflow-local"]

    stopped = tallyflow("local", "down", "--run-dir", str(run_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert not ports & listening_ports()
    survivors = {pid: cmd for pid, cmd in live_processes().items()
                 if pid in (stack["pubsub_pid"], stack["bigquery_pid"]) or str(run_dir) in cmd
                 or f"--port={stack['pubsub_port']}" in cmd}
    assert survivors == {}
    assert not (run_dir / "stack.json").exists()
    assert tallyflow("local", "status", "--run-dir", str(run_dir)).returncode == 3
