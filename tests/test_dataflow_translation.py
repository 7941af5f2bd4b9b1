"""The pipelines translate for Dataflow, offline: `DataflowRunner` with `--dry_run=True`.

A dry run does the full translation (pickling every DoFn, checking Pub/Sub
names, building the portable pipeline proto and the job request) without
contacting Google Cloud. It needs a well-formed project id and a `gs://` temp
location (a malformed bucket makes it wait on the network for minutes).

`STORAGE_WRITE_API` is a cross-language transform: constructing it starts
Beam's Java expansion service from a jar Beam downloads from Maven. Offline,
construction fails; the test pins down that this failure is a clear,
documented one-liner rather than faking a success.
"""
import socket
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners import pipeline_context
from apache_beam.runners.dataflow.internal.apiclient import dataflow as dataflow_api
from apache_beam.runners.runner import PipelineState

from pipelines import recompute_usage, streaming_usage
from schemas.events import Limits
from tests.conftest import EXAMPLE_METERS, ROOT
from transforms.bigquery import ExpansionServiceUnavailable
from transforms.dedup import KEYED_EVENT
from transforms.event_coder import UsageEventCoder
from transforms.restate import RecomputeRun

PROJECT = "tallyflow-test"  # Beam checks project ids: 6-30 characters
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/usage-events"
DATAFLOW = ["--runner", "DataflowRunner", "--dry_run=True", "--project", PROJECT,
            "--region", "us-central1", "--temp_location", "gs://tallyflow-test/tmp"]
STREAMING = DATAFLOW + ["--subscription", SUBSCRIPTION, "--meters", str(EXAMPLE_METERS),
                        "--bigquery_project", PROJECT]
JobType = dataflow_api.JobType
NS = 1_000_000_000
TABLE_WRITES = ("WriteEvents", "WriteDuplicates", "WriteDeadLetters", "WriteLateEvents",
                "WriteUsagePanes")
STORAGE_WRITE_JAR = "beam-sdks-java-io-google-cloud-platform-expansion-service-*.jar"


def translate(pipeline: beam.Pipeline):
    """Runs the dry run; returns the Dataflow job request it built."""
    result = pipeline.run()
    assert result.state == PipelineState.DONE
    return pipeline.runner.job


def translate_streaming(*extra: str, replay_since_ns: int | None = None):
    options = PipelineOptions(STREAMING + list(extra), streaming=True, save_main_session=False)
    pipeline = beam.Pipeline(options=options)
    streaming_usage.build(pipeline, options.view_as(streaming_usage.StreamingUsageOptions),
                          "stream-dry-run", replay_since_ns)
    return translate(pipeline)


def assert_read_in_parallel_streams(job, read: str) -> None:
    """The Storage Read transform `read` (ReadTableStreams, ReadQueryStreams) reads streams
    that come out of a reshuffle: the read of one stream is a bundle of its own, on
    whichever worker gets it."""
    transforms = job.proto_pipeline.components.transforms
    producers = {}  # a composite and its last part produce the same PCollection
    for t in transforms.values():
        for output in t.outputs.values():
            producers.setdefault(output, set()).add(t.spec.urn)
    (step,) = [t for t in transforms.values() if t.unique_name == f"{read}/ReadStream"]
    (streams,) = step.inputs.values()
    assert "beam:transform:reshuffle:v1" in producers[streams]


def transform_names(job) -> set[str]:
    return {t.unique_name for t in job.proto_pipeline.components.transforms.values()}


def pubsub_read(job) -> beam_runner_api_pb2.PubSubReadPayload:
    reads = [t for t in job.proto_pipeline.components.transforms.values()
             if t.spec.urn == "beam:transform:pubsub_read:v1"]
    assert len(reads) == 1
    return beam_runner_api_pb2.PubSubReadPayload.FromString(reads[0].spec.payload)


# ---------------------------------------------------------------- streaming


def test_streaming_translates_with_the_default_write_method():
    job = translate_streaming()  # returns: nothing waits for an expansion service
    assert job.proto.type == JobType.JOB_TYPE_STREAMING
    read = pubsub_read(job)
    assert read.subscription == SUBSCRIPTION
    assert read.timestamp_attribute == "ce-time"  # the watermark tracks event time on Dataflow
    assert read.with_attributes and not read.id_attribute
    names = transform_names(job)
    for write in TABLE_WRITES:  # INSERT_ALL: batched across bundles, deterministic insert ids
        assert f"{write}/Batch/GroupIntoBatches" in names
        assert f"{write}/InsertAll" in names
    assert not any("WriteToBigQuery" in name for name in names)


def test_streaming_translates_with_streaming_inserts():
    job = translate_streaming("--bigquery_write_method", "STREAMING_INSERTS")
    assert job.proto.type == JobType.JOB_TYPE_STREAMING
    names = transform_names(job)
    for write in TABLE_WRITES:
        assert f"{write}/WriteToBigQuery" in names
        assert f"{write}/InsertAll" not in names


def test_streaming_translates_with_id_label_dead_letter_topic_and_restore():
    job = translate_streaming("--id_label", "message-id", "--timestamp_attribute", "event-time",
                              "--dead_letter_topic", f"projects/{PROJECT}/topics/dead-letters",
                              "--restore_open_windows", "--window", "15m",
                              "--allowed_lateness", "2h")
    read = pubsub_read(job)
    assert (read.id_attribute, read.timestamp_attribute) == ("message-id", "event-time")
    names = transform_names(job)
    assert {"PublishDeadLetters", "ReplayOpenWindows", "AfterReplay", "WithReplay"} <= names


def test_the_restore_reads_its_replay_in_parallel_streams():
    job = translate_streaming("--restore_open_windows", replay_since_ns=1_793_491_200 * NS)
    assert job.proto.type == JobType.JOB_TYPE_STREAMING
    assert_read_in_parallel_streams(job, "ReplayOpenWindows/ReadStreams")
    assert_read_in_parallel_streams(job, "RecordedSince/ReadStreams")


def test_the_deduplication_shuffle_carries_events_in_their_compact_coder():
    """What Streaming Engine bills per event (transforms/event_coder.py): the job's
    shuffle into deduplication is the identity's strings and UsageEventCoder."""
    components = translate_streaming().proto_pipeline.components
    (dedup,) = [t for t in components.transforms.values()
                if t.unique_name.endswith("FirstCopyWithinHorizon/ParDo(_FirstCopyWithinHorizon)")]
    (keyed,) = dedup.inputs.values()
    context = pipeline_context.PipelineContext(components)
    coder = context.coders.get_by_id(components.pcollections[keyed].coder_id)
    assert coder == beam.coders.registry.get_coder(KEYED_EVENT)
    assert isinstance(coder.value_coder(), UsageEventCoder)


def test_bad_pubsub_names_fail_at_construction():
    options = PipelineOptions(STREAMING, streaming=True)
    streaming = options.view_as(streaming_usage.StreamingUsageOptions)
    streaming.subscription = "projects/p/subscriptions/s"  # project and name too short
    with pytest.raises(ValueError, match="Invalid PubSub"):
        streaming_usage.build(beam.Pipeline(options=options), streaming, "stream-dry-run")


def test_storage_write_api_needs_the_java_expansion_service():
    docs = (ROOT / "docs" / "streaming.md").read_text()
    assert "STORAGE_WRITE_API" in docs and "expansion service" in docs
    assert "~/.apache_beam/cache/jars/" in docs
    if list((Path.home() / ".apache_beam" / "cache" / "jars").glob(STORAGE_WRITE_JAR)):
        job = translate_streaming("--bigquery_write_method", "STORAGE_WRITE_API")
        assert any("StorageWriteToBigQuery" in name for name in transform_names(job))
        return
    if _resolves("repo.maven.apache.org"):
        pytest.skip("online: constructing STORAGE_WRITE_API would download the expansion "
                    "service jar from Maven")
    with pytest.raises(ExpansionServiceUnavailable, match="Java expansion service") as failure:
        translate_streaming("--bigquery_write_method", "STORAGE_WRITE_API")
    assert "~/.apache_beam/cache/jars/" in str(failure.value)
    # and the command says so in one line, exit status 2
    done = subprocess.run([sys.executable, "-m", "tallyflow.cli", "stream", *STREAMING,
                           "--bigquery_write_method", "STORAGE_WRITE_API"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tallyflow stream: --bigquery_write_method STORAGE_WRITE_API needs "
                           "Beam's Java expansion service")


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- recompute


def test_recompute_from_files_translates():
    options = PipelineOptions(DATAFLOW + ["--meters", str(EXAMPLE_METERS),
                                          "--input", str(ROOT / "tallyflow" / "examples" / "events.jsonl"),
                                          "--output_dir", "gs://tallyflow-test/out"])
    pipeline = beam.Pipeline(options=options)
    recompute_usage.build(pipeline, options.view_as(recompute_usage.RecomputeOptions),
                          Limits(now_ns=time.time_ns(), max_future_skew_ns=300 * NS))
    job = translate(pipeline)
    assert job.proto.type == JobType.JOB_TYPE_BATCH
    # only the pipeline's ends: its middle is free to change
    assert {"Read", "WriteUsage", "WriteDeadLetters", "WriteSummary"} <= transform_names(job)


def translate_recompute_from_bigquery():
    """The BigQuery mode's pipeline (`run()` creates the staging table first: not offline)."""
    options = PipelineOptions(DATAFLOW + ["--meters", str(EXAMPLE_METERS),
                                          "--bigquery_project", PROJECT])
    restatement = RecomputeRun("recompute-dry-run", 1_793_491_200 * NS, 1_793_577_600 * NS,
                               3600 * NS, "translation test", time.time_ns())
    pipeline = beam.Pipeline(options=options)
    recompute_usage.build(pipeline, options.view_as(recompute_usage.RecomputeOptions),
                          Limits(now_ns=None, max_future_skew_ns=300 * NS), restatement)
    return translate(pipeline)


def test_recompute_from_bigquery_translates():
    job = translate_recompute_from_bigquery()
    assert job.proto.type == JobType.JOB_TYPE_BATCH
    assert {"ReadEvents", "Stage", "WriteDeadLetters", "CommitRun"} <= transform_names(job)


def test_recompute_reads_its_period_in_parallel_streams():
    assert_read_in_parallel_streams(translate_recompute_from_bigquery(),
                                    "ReadEvents/ReadStreams")


def test_recompute_stages_through_pending_streams_committed_before_its_transaction():
    names = transform_names(translate_recompute_from_bigquery())
    assert {"Stage/AppendPending", "CommitRun/CommitStreams", "CommitRun/Commit"} <= names
    assert "Stage/InsertAll" not in names


def test_both_pipelines_options_live_in_one_process():
    """Beam parses every imported options class with one parser when a pipeline runs."""
    options = PipelineOptions(["--meters", "m.yaml", "--window", "15m",
                               "--subscription", SUBSCRIPTION,
                               "--period_start", "2026-01-01T00:00:00Z"])
    everything = options.get_all_options()
    assert (everything["meters"], everything["window"]) == ("m.yaml", "15m")
    assert options.view_as(streaming_usage.StreamingUsageOptions).window == "15m"
    assert options.view_as(recompute_usage.RecomputeOptions).window == "15m"


# ---------------------------------------------------------------- rate


def test_rate_translates():
    """The rating pipeline (`run()` reads the last revision and stages first: not offline)."""
    from pipelines import rate_usage
    from transforms.rating import RatingRun

    prices = ROOT / "tallyflow" / "examples" / "prices.yaml"
    options = PipelineOptions(DATAFLOW + ["--prices", str(prices), "--bigquery_project", PROJECT,
                                          "--period_start", "2026-11-01T00:00:00Z",
                                          "--period_end", "2026-12-01T00:00:00Z"])
    rate = options.view_as(rate_usage.RateOptions)
    start, end = rate_usage.check_arguments(rate)
    rating = RatingRun("rate-dry-run", start, end, 1, time.time_ns(), "translation test")
    pipeline = beam.Pipeline(options=options)
    rate_usage.build(pipeline, rate, rate_usage.load_price_book_anywhere(str(prices)), rating,
                     "gs://tallyflow-test/rate")
    job = translate(pipeline)
    assert job.proto.type == JobType.JOB_TYPE_BATCH
    assert_read_in_parallel_streams(job, "ReadUsage")
