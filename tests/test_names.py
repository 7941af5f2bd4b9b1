"""Resource names are checked against the services' rules before any SQL is built."""
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from tallyflow.reports import explain
from tallyflow.local import stack as local_stack
from tallyflow.local import publish
from tallyflow.reports import reconcile
from tallyflow.reports import statement
from pipelines.recompute_usage import RecomputeOptions
from pipelines.streaming_usage import StreamingUsageOptions
from schemas import names
from transforms.bigquery_target import BigQueryTarget

# a dataset that would turn `project.dataset.table` into a UNION over another project
CRAFTED = "metering.usage` UNION ALL SELECT * FROM `victim-project.billing"


@pytest.mark.parametrize("project,dataset", [
    ("tallyflow-test", CRAFTED), ("tallyflow-test", "a`b"), ("tallyflow-test", "a.b"),
    ("tallyflow-test", ""), ("tallyflow-test", "x" * 1025), ("tallyflow-test", "met ering"),
    ("p", "metering"), ("Tallyflow-test", "metering"), ("tallyflow-test-", "metering"),
    ("9tallyflow", "metering"), ("tally`flow-x", "metering"), ("a" * 31, "metering"),
    ("victim-project.billing`--", "metering"), ("tallyflow\n-test", "metering"),
])
def test_a_target_refuses_names_bigquery_does_not_allow(project, dataset):
    with pytest.raises(names.InvalidName, match="invalid BigQuery"):
        BigQueryTarget(project, dataset)


@pytest.mark.parametrize("project,dataset", [
    ("tallyflow-test", "metering"), ("example.com:tallyflow-x", "Usage_2026"),
    ("a23456", "_"), ("a" * 30, "d" * 1024)])
def test_a_target_accepts_valid_names(project, dataset):
    assert BigQueryTarget(project, dataset).table_id("events") == f"{project}.{dataset}.events"


@pytest.mark.parametrize("table", ["usage`; DROP", "a.b", "", "t" * 1025, "line\nbreak"])
def test_table_names_are_checked_where_the_id_is_built(table):
    with pytest.raises(names.InvalidName, match="invalid BigQuery table"):
        BigQueryTarget("tallyflow-test", "metering").table_id(table)


@pytest.mark.parametrize("table", ["usage_recomputed__staging_recompute_1", "Ünïcode-tbl 2"])
def test_valid_table_names_pass(table):
    assert BigQueryTarget("tallyflow-test", "m").table_id(table).endswith(table)


def beam_option_exit(options_class, argv) -> int:
    with pytest.raises(SystemExit) as exit_:
        PipelineOptions(argv).view_as(options_class)
    return exit_.value.code


@pytest.mark.parametrize("argv", [
    ["--bigquery_dataset", CRAFTED], ["--bigquery_project", "victim`.x"],
])
def test_pipeline_options_refuse_bad_bigquery_names_as_bad_arguments(argv, capsys):
    assert beam_option_exit(RecomputeOptions, argv) == 2
    assert "invalid BigQuery" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv,kind", [
    (["--subscription", "projects/tallyflow-test/subscriptions/a`b"], "Pub/Sub subscription"),
    (["--subscription", "projects/tallyflow-test/topics/usage-events"], "Pub/Sub subscription"),
    (["--dead_letter_topic", "projects/tallyflow-test/topics/goog-x"], "Pub/Sub topic"),
    (["--dead_letter_topic", "projects/Bad/topics/dead-letters"], "Pub/Sub topic"),
])
def test_streaming_options_refuse_bad_pubsub_names(argv, kind, capsys):
    assert beam_option_exit(StreamingUsageOptions, argv) == 2
    assert f"invalid {kind}" in capsys.readouterr().err


@pytest.mark.parametrize("parser,argv", [
    (reconcile._parser, ["--period-start", "x", "--period-end", "y", "--dataset", CRAFTED]),
    (explain._parser, ["--subject", "s", "--meter", "m", "--meters", "m.yaml",
                       "--bigquery_dataset", CRAFTED]),
    (statement._parser, ["--subject", "s", "--period-start", "x", "--period-end", "y",
                         "--meters", "m.yaml", "--project", "bad`project"]),
    (local_stack._parser, ["up", "--dataset", CRAFTED]),
    (local_stack._parser, ["up", "--topic", "a/b"]),
    (local_stack._parser, ["up", "--subscription", "goog-sub"]),
    (publish._parser, ["--synthetic", "--topic", "x`y"]),
    (publish._parser, ["--synthetic", "--project", "UPPER-case"]),
])
def test_every_command_refuses_bad_names_before_doing_anything(parser, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument" in last and ": invalid " in last, last


def test_the_template_metadata_uses_the_same_rules():
    from tallyflow import template

    assert template.OPTION_KINDS["bigquery_dataset"].regex == names.DATASET
    assert template.OPTION_KINDS["bigquery_project"].regex == names.PROJECT
    assert template.OPTION_KINDS["subscription"].regex == names.SUBSCRIPTION
    assert template.OPTION_KINDS["dead_letter_topic"].regex == names.TOPIC


@pytest.mark.parametrize("kind", ["recompute", "rate", "stream", "reconcile"])
def test_run_ids_name_their_kind_and_start_and_are_valid_names(kind):
    import re
    import time

    before = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    first, second = names.new_run_id(kind), names.new_run_id(kind)
    after = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    match = re.fullmatch(rf"{kind}-(\d{{8}}-\d{{6}})-[0-9a-f]{{6}}", first)
    assert match and before <= match[1] <= after
    assert first != second  # same second, still two runs
    # a run id names staging tables (hyphens become underscores) and jobs
    names.bigquery_table(f"usage_recomputed__staging_{first.replace('-', '_')}")
