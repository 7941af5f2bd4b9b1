"""Cost per billion events: every billable byte and CPU microsecond, measured, then priced.

For the synthetic stream behind `tallyflow publish --synthetic` (5% duplicates, 10%
of them conflicting, 1% invalid) and a high-cardinality variant (`--hc-customers`):

- Pub/Sub: on a private local stack, each message shape (single events and
  CloudEvents batches of 10, 100 and 1,000 events, plain, gzip and zstd) is
  published to a topic of its own and pulled back. Publish: the PublishRequests
  the client sends (its default batching: 100 messages or 1 MB a request),
  sized as protobuf; subscribe: the pull responses the emulator returns (up to
  1,000 messages a pull), sized as protobuf. Each request is billed at least
  1,000 bytes (Pub/Sub pricing, "Throughput costs").
- BigQuery: the stream job (`pipelines.streaming_usage`, DirectRunner) runs on
  the stack over 100-event gzip batches until every accepted event is in
  `events`; every row of every table is then read back and sized as BigQuery
  bills it (`billed_row_bytes`). `usage_panes` depends on time more than on
  events, so it is priced from its measured bytes per row and panes per key at
  the production trigger (`--early-firing`), with every key of the run's
  customers active in every window (PANE_MODEL: keys per window = customers x the
  run's usage keys per customer; panes per key = 3600 / early firing + 1).
  Storage is priced twice: by logical bytes, and by physical (compressed) bytes,
  which a dataset with `storage_billing_model = PHYSICAL` pays; the emulator
  cannot show BigQuery's compressed size, so the rows read back are compressed
  as Parquet with zstd instead (`physical_bytes`), a stand-in, not a measurement
  of BigQuery's format.
- Streaming Engine: the shuffles are found in the built streaming pipeline
  (stateful DoFns, GroupByKeys, Combines) with the coders Beam chose for their
  inputs; the inputs themselves are computed here with the pipeline's own
  DoFns and sized with those coders, and so is the deduplication state each
  identity keeps (what its stateful DoFn writes, in its state spec's coder).
- CPU: microseconds of one core per accepted event in tallyflow's own code,
  stage by stage, outside the runner (the DirectRunner's overhead is not
  Dataflow's), and the shuffles' coders encoding and decoding what they carry.
  `--engine-only` measures these and the shuffles without the stack, for
  comparing two trees on the same load.

The table of $ per billion accepted events is computed from these figures and
the list prices below; a new measurement updates it.

    .venv/bin/python benchmarks/cost.py --events 5000
"""
from __future__ import annotations

import argparse
import base64
import functools
import inspect
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import apache_beam as beam  # noqa: E402
from apache_beam.pipeline import PipelineVisitor  # noqa: E402
from apache_beam.transforms import userstate  # noqa: E402
from apache_beam.utils.timestamp import Timestamp  # noqa: E402

from pipelines import streaming_usage  # noqa: E402
from schemas.catalog import load_catalog  # noqa: E402
from schemas.encoding import DEFAULT_MAX_DECOMPRESSED_BYTES, decode_content  # noqa: E402
from schemas.events import Limits, Payload  # noqa: E402
from schemas.metering import usage_row  # noqa: E402
from schemas.tables import (DEAD_LETTER, DUPLICATE_EVENTS, EVENTS, LATE_EVENTS,  # noqa: E402
                           USAGE_PANES)
from streaming import METERS, Stack, stop  # noqa: E402  (benchmarks/streaming.py)
from tallyflow.local.publish import synthetic_messages  # noqa: E402
from tallyflow.local.stack import down, up  # noqa: E402
from tallyflow.local.synthetic import FIRST_COPIES, SyntheticConfig, count_kinds  # noqa: E402
from transforms import rows  # noqa: E402
from transforms.aggregate import UsageCombineFn, ReadMetersFn  # noqa: E402
from transforms.parse import ParsePayloadsFn  # noqa: E402

# --------------------------------------------------------------- list prices
# List prices in USD as of PRICES_AS_OF, from memory of Google's pricing pages (this
# machine has no internet): re-check them on the pages named before relying on them.
PRICES_AS_OF = "2026-12-01"
PUBSUB_PER_TIB = Decimal("40")              # "Pub/Sub pricing": throughput, per TiB
PUBSUB_MIN_REQUEST_BYTES = 1000             # same page: each request billed >= 1,000 bytes
STREAMING_ENGINE_PER_GB = Decimal("0.018")  # "Dataflow pricing": Streaming Engine data processed
VCPU_HOUR = Decimal("0.069")                # "Dataflow pricing": streaming worker vCPU per hour
GB_HOUR = Decimal("0.0035557")              # "Dataflow pricing": streaming memory per GB-hour
GB_PER_VCPU = Decimal("3.75")               # n1-standard machines: 3.75 GB per vCPU
STORAGE_WRITE_PER_GIB = Decimal("0.025")    # "BigQuery pricing": Storage Write API ingestion,
STORAGE_WRITE_FREE_TIB_MONTH = 2            # same page: the first 2 TiB a month are free
ACTIVE_STORAGE_PER_GIB_MONTH = Decimal("0.02")  # "BigQuery pricing": active logical storage
# Same page: active physical storage, the compressed bytes, with a dataset's
# storage_billing_model = PHYSICAL (time travel and fail-safe bytes billed too).
ACTIVE_PHYSICAL_PER_GIB_MONTH = Decimal("0.04")
SECONDS_PER_MONTH = 2_629_800  # an average month, 30.4375 days: exact, no float
BILLION = 10 ** 9
TIB, GIB, GB = 2 ** 40, 2 ** 30, 10 ** 9

# ------------------------------------------------------- BigQuery row sizes
# "Storage pricing" / "Data size calculation" (BigQuery docs): bytes per value by
# type; STRING and BYTES 2 + their length, JSON as its string; NULL is 0 bytes.
FIXED_BYTES = {"INT64": 8, "FLOAT64": 8, "NUMERIC": 16, "BIGNUMERIC": 32, "BOOL": 1,
               "TIMESTAMP": 8, "DATE": 8, "DATETIME": 8, "TIME": 8}


def value_bytes(kind: str, value) -> int:
    if value is None:
        return 0
    if kind in FIXED_BYTES:
        return FIXED_BYTES[kind]
    if kind == "BYTES":  # bytes, or base64 text as a REST client sees them
        return 2 + len(value if isinstance(value, bytes) else base64.b64decode(value))
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return 2 + len(text.encode("utf-8", "surrogatepass"))  # STRING, JSON


def billed_row_bytes(table, row: dict) -> int:
    """A row's size as BigQuery bills its ingestion and storage."""
    return sum(value_bytes(column.type, row.get(column.name)) for column in table.columns)


def print_columns(table, table_rows: list[dict], accepted: int) -> None:
    """Each column's billed bytes per accepted event, and what it costs per billion:
    written once (Storage Write API) and kept a month (active storage)."""
    print(f"`{table.name}` per column: | column | B per accepted event | $ per billion |")
    for column in table.columns:
        size = Decimal(sum(value_bytes(column.type, r.get(column.name))
                           for r in table_rows)) / accepted
        cost = size * BILLION / GIB * (STORAGE_WRITE_PER_GIB + ACTIVE_STORAGE_PER_GIB_MONTH)
        print(f"| {column.name} | {size:.1f} | {cost:.2f} |")


# ------------------------------------------------------------------ inputs

def stream_config(events: int, customers: int, batch_size: int) -> SyntheticConfig:
    """The synthetic stream of BENCHMARKS.md, ending now (so nothing is FUTURE_TIME)."""
    rate = 10.0
    return SyntheticConfig(seed=0, customers=customers, events=events, rate=rate,
                           start_ns=time.time_ns() - int(events / rate) * 10 ** 9,
                           batch_size=batch_size, duplicate_fraction=0.05,
                           conflict_fraction=0.1, invalid_fraction=0.01)


def accepted_count(labelled) -> int:
    counts = count_kinds(labelled)
    return sum(counts[kind] for kind in FIRST_COPIES)


def outgoing(config: SyntheticConfig, encoding: str | None):
    labelled, messages = synthetic_messages(config)
    messages = [replace(m, at_ns=None) for m in messages]
    if encoding:
        messages = [m.compressed(encoding) for m in messages]
    return labelled, messages


# ------------------------------------------------------------------ Pub/Sub

def attributes_of(message, attribute: str = "ce-time") -> dict:
    attributes = dict(message.attributes)
    if message.time:
        attributes.setdefault(attribute, message.time)
    return attributes


def publish_request_bytes(topic: str, messages) -> list[int]:
    """Sizes of the PublishRequests the client sends: its default batching, 100
    messages or 1 MB per request, whichever comes first."""
    from google.cloud.pubsub_v1 import types
    from google.pubsub_v1.types import PublishRequest, PubsubMessage

    settings = types.BatchSettings()
    sizes, batch, batch_bytes = [], [], 0
    for message in messages:
        proto = PubsubMessage(data=message.data, attributes=attributes_of(message))
        size = PubsubMessage.pb(proto).ByteSize()
        if batch and (len(batch) == settings.max_messages
                      or batch_bytes + size > settings.max_bytes):
            sizes.append(PublishRequest.pb(PublishRequest(topic=topic, messages=batch))
                         .ByteSize())
            batch, batch_bytes = [], 0
        batch.append(proto)
        batch_bytes += size
    if batch:
        sizes.append(PublishRequest.pb(PublishRequest(topic=topic, messages=batch)).ByteSize())
    return sizes


def pull_response_bytes(stack, messages, label: str) -> list[int]:
    """Publishes `messages` to a topic of their own and pulls them back: the sizes of
    the pull responses (up to 1,000 messages each)."""
    from google.pubsub_v1.types import PullResponse

    publisher, subscriber = stack.publisher_client(), stack.subscriber_client()
    topic = stack.topic_path(f"cost-{label}")
    subscription = stack.subscription_path(f"cost-{label}-sub")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    for future in [publisher.publish(topic, m.data, **attributes_of(m)) for m in messages]:
        future.result(timeout=120)
    sizes, received = [], 0
    while received < len(messages):
        response = subscriber.pull(subscription=subscription, max_messages=1000, timeout=60)
        if not response.received_messages:
            continue
        sizes.append(PullResponse.pb(response).ByteSize())
        received += len(response.received_messages)
        subscriber.acknowledge(subscription=subscription,
                               ack_ids=[m.ack_id for m in response.received_messages])
    return sizes


def billed(sizes: list[int]) -> int:
    return sum(max(PUBSUB_MIN_REQUEST_BYTES, size) for size in sizes)


def measure_pubsub(stack, events: int, customers: int) -> dict:
    """Billed bytes per accepted event, (events per message, encoding) -> (publish, pull)."""
    out = {}
    for size in (1, 10, 100, 1000):
        for encoding in (None, "gzip", "zstd"):
            labelled, messages = outgoing(stream_config(events, customers, size), encoding)
            accepted = accepted_count(labelled)
            label = f"m{size}-{encoding or 'plain'}-{time.time_ns() % 10 ** 8}"
            published = billed(publish_request_bytes(stack.topic_path("x"), messages))
            pulled = billed(pull_response_bytes(stack, messages, label))
            out[size, encoding] = (Decimal(published) / accepted, Decimal(pulled) / accepted)
            if size == 1 and encoding is None:  # a publisher that sends each message alone
                alone = billed([size for m in messages for size in publish_request_bytes(
                    stack.topic_path("x"), [m])])
                out["unbatched"] = (Decimal(alone) / accepted, Decimal(pulled) / accepted)
    return out


# ------------------------------------------------------ BigQuery, the stream

PER_EVENT_TABLES = (EVENTS, DEAD_LETTER, DUPLICATE_EVENTS, LATE_EVENTS)


def run_stream(stack, events: int, customers: int, label: str, timeout: float) -> dict:
    """The stream job over 100-event gzip batches until every accepted event is stored;
    returns every table's rows."""
    labelled, messages = outgoing(stream_config(events, customers, 100), "gzip")
    accepted = accepted_count(labelled)
    lane = Stack(stack, label)
    futures = [lane.publisher.publish(lane.lane.topic_path(), m.data, **attributes_of(m))
               for m in messages]
    for future in futures:
        future.result(timeout=120)
    log = Path(tempfile.mkdtemp(prefix="tallyflow-cost-")) / "stream.log"
    job = lane.start_job(log, "--window", "1h", "--allowed_lateness", "48h",
                         "--early_firing_seconds", "5")
    started = time.monotonic()
    try:
        while lane.count() < accepted:
            if job.poll() is not None or time.monotonic() - started > timeout:
                raise RuntimeError(f"{lane.count()}/{accepted} events landed; see {log}")
            time.sleep(2)
        time.sleep(10)  # the last dead letters, duplicates and panes
    finally:
        stop(job)
    tables = {}
    for table in PER_EVENT_TABLES + (USAGE_PANES,):
        tables[table.name] = [dict(r) for r in lane.bq.query(
            f"SELECT * FROM `{lane.lane.project}.{lane.lane.dataset}.{table.name}`").result()]
    tables["accepted"] = accepted
    return tables


def bigquery_bytes(tables: dict, keys_per_window: int, events_per_window: Decimal,
                   early_firing_seconds: int) -> dict:
    """Billed bytes per accepted event, per table; usage_panes by PANE_MODEL."""
    accepted = tables["accepted"]
    out = {}
    for table in PER_EVENT_TABLES:
        out[table.name] = Decimal(sum(billed_row_bytes(table, r)
                                      for r in tables[table.name])) / accepted
    panes = tables[USAGE_PANES.name]
    per_pane = (Decimal(sum(billed_row_bytes(USAGE_PANES, r) for r in panes))
                / max(len(panes), 1))
    panes_per_window = Decimal(3600 // early_firing_seconds + 1)  # early panes + on time
    out[USAGE_PANES.name] = per_pane * keys_per_window * panes_per_window / events_per_window
    return out


def arrow_column(kind: str, values: list):
    """A BigQuery column's values (as the client returns them) as an Arrow array."""
    import pyarrow as pa

    if kind == "JSON":
        values = [None if v is None else json.dumps(v, separators=(",", ":")) for v in values]
    types = {"STRING": pa.string(), "JSON": pa.string(), "BYTES": pa.binary(),
             "INT64": pa.int64(), "BOOL": pa.bool_(), "DATE": pa.date32(),
             "TIMESTAMP": pa.timestamp("us", tz="UTC"), "NUMERIC": pa.decimal128(38, 9),
             "BIGNUMERIC": pa.decimal256(76, 38)}
    return pa.array(values, type=types[kind])


def physical_bytes(tables: dict) -> dict:
    """Compressed bytes per accepted event, per table: an estimate of what BigQuery's
    physical storage billing charges. BigQuery's own columnar format (Capacitor) cannot
    be measured on the emulator; Parquet with zstd, one row group, rows ordered as the
    table is partitioned and clustered, is the stand-in."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = {}
    for table in PER_EVENT_TABLES:
        table_rows = tables[table.name]
        if not table_rows:
            out[table.name] = Decimal(0)
            continue
        order = [c for c in (table.partition_field, *table.clustering) if c]
        table_rows = sorted(table_rows, key=lambda r: tuple(str(r.get(c)) for c in order))
        arrow = pa.table({c.name: arrow_column(c.type, [r.get(c.name) for r in table_rows])
                          for c in table.columns})
        sink = io.BytesIO()
        pq.write_table(arrow, sink, compression="zstd", row_group_size=len(table_rows))
        out[table.name] = Decimal(sink.tell()) / tables["accepted"]
    return out


# ------------------------------------------- shuffles, state and CPU (no runner)

def pipeline_shuffles(catalog_path: Path) -> tuple[dict, dict]:
    """The built streaming pipeline's shuffles inside StreamUsage: label -> input coder,
    for stateful DoFns (label -> their DoFn too) and GroupByKeys/Combines."""
    options = streaming_usage.StreamingUsageOptions(
        ["--subscription", "projects/cost-1/subscriptions/cost-sub", "--meters",
         str(catalog_path), "--bigquery_project", "cost-1", "--bigquery_dataset", "cost"],
        streaming=True)
    pipeline = beam.Pipeline(options=options)
    streaming_usage.build(pipeline, options, "cost")
    coders, stateful = {}, {}

    class Visitor(PipelineVisitor):
        def enter_composite_transform(self, node):
            if isinstance(node.transform, beam.CombinePerKey) and "StreamUsage" in node.full_label:
                coders[node.full_label] = _input_coder(node)

        def visit_transform(self, node):
            transform = node.transform
            if "StreamUsage" not in node.full_label or not isinstance(transform, beam.ParDo):
                return
            states, timers = userstate.get_dofn_specs(transform.fn)
            if states or timers:
                coders[node.full_label] = _input_coder(node)
                stateful[node.full_label] = transform.fn

    pipeline.visit(Visitor())
    return coders, stateful


def _input_coder(node):
    (pcoll,) = node.inputs
    return beam.coders.registry.get_coder(pcoll.element_type)


class _State:
    """A state cell for calling a stateful DoFn outside the runner, sized by its coder."""

    def __init__(self, coder):
        self.coder = coder
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None

    def size(self) -> int:
        return 0 if self.value is None else len(self.coder.encode(self.value))


class _Timer:
    def set(self, _when):
        pass


def tagged(output) -> bool:
    return isinstance(output, beam.pvalue.TaggedOutput)


def call_stateful(fn, cells: dict, keyed, timestamp) -> list:
    """`fn.process(keyed)` with this key's state cells and a no-op timer."""
    kwargs = {}
    for name, default in _process_parameters(fn):
        if hasattr(default, "state_spec"):
            spec = default.state_spec
            kwargs[name] = cells.setdefault(spec.name, _State(spec.coder))
        elif hasattr(default, "timer_spec"):
            kwargs[name] = _Timer()
        elif default is beam.DoFn.TimestampParam:
            kwargs[name] = timestamp
    return list(fn.process(keyed, **kwargs) or ())


@functools.cache
def _process_parameters(fn) -> tuple:
    """(name, default) of `fn.process`, read once: inspecting it per event is this
    script's cost, not the DoFn's."""
    return tuple((name, parameter.default)
                 for name, parameter in inspect.signature(fn.process).parameters.items())


def measure_engine(payloads: list[Payload], catalog, coders: dict, stateful: dict) -> dict:
    """Shuffle bytes, state bytes per identity and CPU per stage, all per accepted event."""
    (dedup_label, dedup_fn), = [(k, v) for k, v in stateful.items() if "Deduplicate" in k]
    (combine_label, combine_coder), = [(k, v) for k, v in coders.items()
                                       if "AggregateUsage" in k and k not in stateful]
    unsized = sorted(set(coders) - {dedup_label, combine_label})
    if unsized:  # a shuffle added to the pipeline since: size it here too
        print(f"shuffles this script does not size: {unsized}", flush=True)
    cpu = Counter()

    clock = time.process_time_ns()
    parse = ParsePayloadsFn(catalog, Limits(now_ns=None))
    events = [r for p in payloads for r in parse.process(p) if not tagged(r)]
    cpu["parse"] = time.process_time_ns() - clock

    cells, unique = defaultdict(dict), []
    clock = time.process_time_ns()
    for event in events:
        keyed = (event.identity, event)
        out = call_stateful(dedup_fn, cells[event.identity], keyed,
                            Timestamp(micros=event.time_ns // 1000))
        unique.extend(o for o in out if not tagged(o))
    cpu["deduplicate"] = time.process_time_ns() - clock
    dedup_coder = coders[dedup_label]
    keyed = [(e.identity, e) for e in events]
    clock = time.process_time_ns()
    encoded = [dedup_coder.encode(k) for k in keyed]
    for blob in encoded:
        dedup_coder.decode(blob)
    cpu["shuffle coding"] = time.process_time_ns() - clock
    dedup_bytes = sum(map(len, encoded))
    state = [sum(c.size() for c in cell.values()) for cell in cells.values()]

    meters = ReadMetersFn(catalog)
    clock = time.process_time_ns()
    readings = [r.value for e in unique for r in meters.process(e) if not tagged(r)]
    cpu["meter"] = time.process_time_ns() - clock
    clock = time.process_time_ns()
    encoded = [combine_coder.encode(r) for r in readings]
    for blob in encoded:
        combine_coder.decode(blob)
    cpu["shuffle coding"] += time.process_time_ns() - clock
    combine_bytes = sum(map(len, encoded))

    combine = UsageCombineFn()
    clock = time.process_time_ns()
    accumulators = {}
    for key, reading in readings:
        accumulators[key] = combine.add_input(accumulators.get(key), reading)
    figures = {key: combine.extract_output(acc) for key, acc in accumulators.items()}
    cpu["aggregate"] = time.process_time_ns() - clock

    clock = time.process_time_ns()
    for event in unique:
        rows.event_row(event, "job")
    for key, value in figures.items():
        row = usage_row(key, 0, 3600 * 10 ** 9, value)
        row.update(pane_timing="EARLY", pane_index=0, is_final=False)
        rows.usage_pane_row(row, False, 0, "job")
    cpu["build rows"] = time.process_time_ns() - clock

    accepted = len(unique)
    return {
        "accepted": accepted,
        "event_rows": [rows.event_row(e, JOB_NAME)[1] for e in unique],
        "shuffle": {dedup_label: Decimal(dedup_bytes) / accepted,
                    combine_label + " (per reading, before combiner lifting)":
                        Decimal(combine_bytes) / accepted},
        "state_per_identity": Decimal(sum(state)) / max(len(state), 1),
        "cpu_us": {stage: Decimal(ns) / 1000 / accepted for stage, ns in cpu.items()},
        "keys_per_customer": Decimal(len(accumulators)) / max(
            len({key[0] for key in accumulators}), 1),
    }


def stream_payloads(events: int, customers: int) -> list[Payload]:
    """The stream's 100-event batches as the Pub/Sub source hands them on (message ids
    as long as Pub/Sub's)."""
    _, messages = outgoing(stream_config(events, customers, 100), None)
    return [Payload(str(PUBSUB_MESSAGE_ID + n), (), m.data, time.time_ns(), attributes_of(m))
            for n, m in enumerate(messages)]


PUBSUB_MESSAGE_ID = 11862383429361714  # a real one's length: 17 digits
JOB_NAME = "tallyflow-stream"  # every row's job_id (docs/deploy.md: the fixed job name)


def measure_engine_warm(payloads, catalog, coders, stateful) -> dict:
    """`measure_engine`, the second time: caches filled, imports done."""
    measure_engine(payloads, catalog, coders, stateful)
    return measure_engine(payloads, catalog, coders, stateful)


def print_engine(name: str, engine: dict) -> None:
    print(f"{name}: {engine['accepted']} accepted")
    print("shuffle bytes per accepted event:",
          {k: f"{v:.1f}" for k, v in engine["shuffle"].items()})
    print(f"dedup state per identity: {engine['state_per_identity']:.1f} bytes")
    print("CPU µs per accepted event:",
          {k: f"{v:.1f}" for k, v in engine["cpu_us"].items()})
    print(f"usage keys per customer: {engine['keys_per_customer']:.1f}", flush=True)


# ------------------------------------------------------------------ the table

def decompress_us(messages, accepted: int) -> Decimal:
    """CPU µs per accepted event to decompress `messages` as the stream does."""
    clock = time.process_time_ns()
    for message in messages:
        decode_content(message.data, message.attributes, DEFAULT_MAX_DECOMPRESSED_BYTES)
    return Decimal(time.process_time_ns() - clock) / 1000 / accepted


def cost_lines(pubsub: tuple, engine: dict, bigquery: dict,
               extra_cpu_us: Decimal = Decimal(0), physical: dict | None = None,
               rate: int | None = None) -> list[tuple[str, str, Decimal]]:
    """(item, quantity per billion accepted events, $ per billion) for one configuration;
    `extra_cpu_us`: decompression's. With `physical` (bytes per table, `physical_bytes`)
    storage is billed by its compressed bytes, and with `rate` (events/s) the Storage
    Write API's free 2 TiB a month is shared out over that month's events."""
    publish, pull = pubsub
    shuffle = sum(engine["shuffle"].values())
    state = engine["state_per_identity"]  # one identity written per accepted event
    cpu_us = sum(engine["cpu_us"].values()) + extra_cpu_us
    vcpu_hours = cpu_us * BILLION / 3_600_000_000  # µs in an hour
    bq_bytes = sum(bigquery.values())
    lines = [
        ("Pub/Sub publish", f"{publish * BILLION / TIB:.3f} TiB",
         publish * BILLION / TIB * PUBSUB_PER_TIB),
        ("Pub/Sub subscribe (the stream's subscription)", f"{pull * BILLION / TIB:.3f} TiB",
         pull * BILLION / TIB * PUBSUB_PER_TIB),
        ("Streaming Engine data processed (shuffles + dedup state)",
         f"{(shuffle + state) * BILLION / GB:.0f} GB",
         (shuffle + state) * BILLION / GB * STREAMING_ENGINE_PER_GB),
        ("Dataflow vCPU (tallyflow's own code only)", f"{vcpu_hours:.1f} vCPU-h",
         vcpu_hours * VCPU_HOUR),
        ("Dataflow memory", f"{vcpu_hours * GB_PER_VCPU:.0f} GB-h",
         vcpu_hours * GB_PER_VCPU * GB_HOUR),
        ("BigQuery Storage Write API (all tables)", f"{bq_bytes * BILLION / GIB:.0f} GiB",
         bq_bytes * BILLION / GIB * STORAGE_WRITE_PER_GIB),
    ]
    if rate is not None:
        billions_a_month = Decimal(rate * SECONDS_PER_MONTH) / BILLION
        free = min(STORAGE_WRITE_FREE_TIB_MONTH * TIB / billions_a_month, bq_bytes * BILLION)
        lines.append((f"Storage Write API free 2 TiB a month ({billions_a_month:.1f} "
                      f"billion events a month)", f"-{free / GIB:.0f} GiB",
                      -free / GIB * STORAGE_WRITE_PER_GIB))
    if physical is None:
        lines.append(("BigQuery active logical storage, one month",
                      f"{bq_bytes * BILLION / GIB:.0f} GiB-month",
                      bq_bytes * BILLION / GIB * ACTIVE_STORAGE_PER_GIB_MONTH))
    else:  # usage_panes is modelled, not stored here: its logical bytes, an upper bound
        stored = sum(physical.values()) + sum(v for k, v in bigquery.items() if k not in physical)
        lines.append(("BigQuery active physical storage, one month (Parquet-zstd estimate)",
                      f"{stored * BILLION / GIB:.0f} GiB-month",
                      stored * BILLION / GIB * ACTIVE_PHYSICAL_PER_GIB_MONTH))
    return lines


def print_table(title: str, lines) -> Decimal:
    total = sum(cost for _, _, cost in lines)
    print(f"\n{title}\n| item | per billion accepted events | $ per billion |\n|---|---:|---:|")
    for item, quantity, cost in lines:
        print(f"| {item} | {quantity} | {cost:.2f} |")
    print(f"| **total** | | **{total:.2f}** |")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--hc-customers", type=int, default=50_000,
                        help="customers of the high-cardinality variant")
    parser.add_argument("--early-firing", type=int, default=60,
                        help="production early-firing seconds, for usage_panes")
    parser.add_argument("--rate", type=int, default=11_574,
                        help="production events/s (a billion a day), for usage_panes")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--engine-only", action="store_true",
                        help="only the shuffles, state and CPU (no stack, no $ table)")
    args = parser.parse_args()
    catalog = load_catalog(METERS)
    coders, stateful = pipeline_shuffles(METERS)
    print("shuffles in StreamUsage:", {k: str(v) for k, v in coders.items()}, flush=True)
    if args.engine_only:
        for customers in (args.customers, args.hc_customers):
            engine = measure_engine_warm(stream_payloads(args.events, customers), catalog, coders,
                                    stateful)
            print_engine(f"{customers} customers", engine)
            print_columns(EVENTS, engine["event_rows"], engine["accepted"])
        return 0
    run_dir = Path(tempfile.mkdtemp(prefix="tallyflow-cost-stack-"))
    stack = up(run_dir, progress=lambda message: None)
    totals = {}
    try:
        for name, customers in (("synthetic", args.customers), ("high-cardinality",
                                                                args.hc_customers)):
            config = stream_config(args.events, customers, 100)
            engine = measure_engine_warm(stream_payloads(args.events, customers), catalog, coders,
                                    stateful)
            pubsub = measure_pubsub(stack, args.events, customers)
            tables = run_stream(stack, args.events, customers, name[:2], args.timeout)
            keys = customers * engine["keys_per_customer"]  # PANE_MODEL
            events_per_window = Decimal(args.rate * 3600)
            bigquery = bigquery_bytes(tables, keys, events_per_window, args.early_firing)
            print(f"\n## {name}: {args.events} events, {customers} customers, "
                  f"{engine['accepted']} accepted")
            print("Pub/Sub billed bytes per accepted event (publish, subscribe):")
            for shape, (pub, sub) in pubsub.items():
                size, encoding = shape if shape != "unbatched" else ("1", "a request each")
                print(f"  {size:>5} events/message {encoding or 'plain':>5}: "
                      f"{pub:8.1f} {sub:8.1f}")
            print_engine(name, engine)
            print("BigQuery billed bytes per accepted event:",
                  {k: f"{v:.1f}" for k, v in bigquery.items()})
            print_columns(EVENTS, tables[EVENTS.name], tables["accepted"])
            physical = physical_bytes(tables)
            print("Parquet-zstd bytes per accepted event (the physical storage estimate):",
                  {k: f"{v:.1f}" for k, v in physical.items()})
            unpack = {None: Decimal(0)}
            for encoding in ("gzip", "zstd"):
                labelled, packed = outgoing(config, encoding)
                unpack[encoding] = decompress_us(packed, accepted_count(labelled))
                print(f"CPU µs per accepted event to decompress {encoding}: "
                      f"{unpack[encoding]:.2f}")
            for size, encoding in ((1, None), (100, None), (100, "gzip"), (100, "zstd")):
                totals[name, size, encoding] = print_table(
                    f"### {name}, {size}-event messages, {encoding or 'uncompressed'} "
                    f"(list prices of {PRICES_AS_OF})",
                    cost_lines(pubsub[size, encoding], engine, bigquery,
                               unpack[encoding if size == 100 else None]))
            for encoding in ("gzip", "zstd"):
                totals[name, 100, encoding, "physical"] = print_table(
                    f"### {name}, 100-event messages, {encoding}, physical storage billing "
                    f"and the Storage Write API's free tier at {args.rate:,} events/s "
                    f"(list prices of {PRICES_AS_OF})",
                    cost_lines(pubsub[100, encoding], engine, bigquery, unpack[encoding],
                               physical, args.rate))
        for name in ("synthetic", "high-cardinality"):
            before = totals[name, 100, None]
            for encoding in ("gzip", "zstd"):
                for billing in ((), ("physical",)):
                    after = totals[(name, 100, encoding) + billing]
                    print(f"{name}: 100-event {encoding} batches"
                          f"{', physical storage billing' if billing else ''} ${after:.2f} "
                          f"per billion, {after / before:.2f} of the ${before:.2f} before "
                          f"the levers")
    finally:
        down(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
