"""Dataflow Flex Templates: derived from the options classes, built and launched offline.

- metadata.json parses strictly as the Dataflow API's TemplateMetadata, and
  what the parser cannot check (names, labels, help) is checked by hand;
- every parameter is an option of the pipeline, passed the way the launcher
  passes it (`--name=value`); every option is a parameter or excluded with a
  reason; the required parameters are exactly what the pipeline refuses to run
  without;
- the committed files are what the generator produces now, so they cannot drift;
- `gcloud dataflow flex-template build --print-only` writes the spec offline;
- the image's entry point (templates/launch.py) builds the streaming job for
  the DataflowRunner (`--dry_run=True`) with the template's parameters, and
  returns instead of waiting on the job.
"""
import importlib
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import pytest
from google.cloud import dataflow_v1beta3
from google.protobuf import json_format

from pipelines import streaming_usage
from pipelines.options import parse_bool
from tallyflow import examples
from tallyflow import template as templates
from schemas.values import parse_duration, parse_rfc3339
from tests.conftest import EXAMPLE_METERS, ROOT

TEMPLATES = list(templates.FLEX_TEMPLATES.values())
PROJECT = "tallyflow-test"  # Beam checks project ids: 6-30 characters
IMAGE = f"us-central1-docker.pkg.dev/{PROJECT}/tallyflow/{{pipeline}}:test"
# What the Dataflow service adds to a launch; offline, a dry run.
DATAFLOW = ["--runner=DataflowRunner", "--dry_run=True", f"--project={PROJECT}",
            "--region=us-central1", "--temp_location=gs://tallyflow-test/tmp"]

# A valid value of each kind, as a launch would pass it.
SAMPLES = {
    templates.SUBSCRIPTION: f"projects/{PROJECT}/subscriptions/usage-events",
    templates.TOPIC: f"projects/{PROJECT}/topics/dead-letters",
    templates.GCS_FILE: "gs://tallyflow-test/meters.yaml",
    templates.GCS_FOLDER: "gs://tallyflow-test/out",
    templates.DURATION: "15m",
    templates.TIMESTAMP: "2026-01-01T00:00:00Z",
    templates.PROJECT: PROJECT,
    templates.DATASET: "metering",
    templates.COUNT: "30",
    templates.TEXT: "event-time",
}
# Per option, where a sample of its kind would not make sense together with the others.
SAMPLE_OVERRIDES = {"dedup_horizon": "72h"}  # at least window + allowed lateness


def committed_metadata(template) -> dict:
    return json.loads((template.folder / "metadata.json").read_text())


def actions_by_name(template) -> dict:
    return {a.dest: a for a in templates.option_actions(templates.options_class(template))}


def sample(template, param: dict) -> str:
    if param["name"] in SAMPLE_OVERRIDES:
        return SAMPLE_OVERRIDES[param["name"]]
    if "defaultValue" in param:
        return param["defaultValue"]
    if param["paramType"] == "ENUM":
        return param["enumOptions"][-1]["value"]
    return SAMPLES[templates.value_kind(actions_by_name(template)[param["name"]])]


@pytest.fixture(params=TEMPLATES, ids=lambda t: t.pipeline)
def template(request):
    return request.param


# ---------------------------------------------------------------- metadata.json


def test_metadata_parses_strictly_as_the_dataflow_api_type(template):
    raw = (template.folder / "metadata.json").read_text()
    parsed = json_format.Parse(raw, dataflow_v1beta3.TemplateMetadata.pb()(),
                               ignore_unknown_fields=False)
    assert parsed.name and parsed.description and parsed.parameters
    assert parsed.streaming == template.streaming
    if template.streaming:  # exact panes need exactly-once, and nothing else is offered
        assert parsed.supports_exactly_once and not parsed.supports_at_least_once
        assert parsed.default_streaming_mode == "EXACTLY_ONCE"


def test_names_labels_and_help_by_hand(template):
    """What the proto parser does not check."""
    doc = committed_metadata(template)
    assert doc["name"] == f"tallyflow {template.pipeline.replace('_', ' ')}"
    assert doc["description"].endswith(".")
    names = [p["name"] for p in doc["parameters"]]
    assert len(names) == len(set(names))
    for p in doc["parameters"]:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", p["name"]), p
        assert p["label"][0].isupper() and len(p["label"]) <= 40 and "_" not in p["label"], p
        assert len(p["helpText"]) > 20 and p["helpText"].endswith("."), p
        assert p["paramType"] in dataflow_v1beta3.ParameterType.__members__, p
        for regex in p.get("regexes", []):
            re.compile(regex)
            assert regex.startswith("^") and regex.endswith("$"), p
        if p["paramType"] == "ENUM":
            values = [o["value"] for o in p["enumOptions"]]
            assert p.get("defaultValue", values[0]) in values, p
        if not p["isOptional"]:
            assert "defaultValue" not in p, p
        if "defaultValue" in p:
            for regex in p.get("regexes", []):
                assert re.match(regex, p["defaultValue"]), p


def test_committed_files_are_what_the_options_class_declares_now(template):
    for name, content in templates.definitions(template).items():
        assert (template.folder / name).read_text() == content, \
            f"templates/{template.pipeline}/{name} is stale: run `tallyflow template build`"


# ---------------------------------------------------------------- parameters <-> options


def test_every_parameter_is_an_option_given_the_way_the_launcher_gives_it(template):
    actions = actions_by_name(template)
    options_class = templates.options_class(template)
    for p in committed_metadata(template)["parameters"]:
        assert p["name"] in actions, f"{p['name']} is not an option of {template.options_class}"
        value = sample(template, p)
        for regex in p.get("regexes", []):
            assert re.match(regex, value), (p["name"], value)
        parsed = getattr(options_class([f"--{p['name']}={value}"]), p["name"])
        expected = int(value) if p["paramType"] == "NUMBER" else value
        if actions[p["name"]].type is parse_bool:
            expected = parse_bool(value)
        if actions[p["name"]].__class__.__name__ == "_AppendAction":
            expected = [value]
        assert parsed == expected, p["name"]


def test_every_option_is_a_parameter_or_excluded_with_a_reason(template):
    names = {p["name"] for p in committed_metadata(template)["parameters"]}
    for option in actions_by_name(template):
        assert option in names or template.not_parameters.get(option), option
    assert not names & set(template.not_parameters)


def test_required_options_are_required_parameters(template):
    params = {p["name"]: p for p in committed_metadata(template)["parameters"]}
    for option in template.required:
        assert params[option]["isOptional"] is False
    assert {n for n, p in params.items() if not p["isOptional"]} == set(template.required)


def _refuse(template, flags: list[str]):
    """Runs the pipeline's own argument checks (what it refuses to run without)."""
    options = templates.options_class(template)(flags)
    if template.streaming:
        streaming_usage.build(beam.Pipeline(), options, "job")
    else:
        importlib.import_module(template.module).check_arguments(options)


def test_required_parameters_are_what_the_pipeline_refuses_to_run_without(template):
    params = {p["name"]: p for p in committed_metadata(template)["parameters"]}
    for missing in template.required:
        flags = [f"--{name}={sample(template, params[name])}"
                 for name in template.required if name != missing]
        with pytest.raises(ValueError, match=f"--{missing} is required"):
            _refuse(template, flags)


@pytest.mark.parametrize("text", ["1h", "15m", "1d", "300s", "250ms", "10h", "48h"])
def test_duration_regex_accepts_what_the_pipeline_accepts(text):
    parse_duration(text)
    assert re.match(templates.DURATION.regex, text)


@pytest.mark.parametrize("text", ["0h", "1x", "h", "-1h", "1.5h", "1 h", "1H"])
def test_duration_regex_rejects_what_the_pipeline_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)
    assert not re.match(templates.DURATION.regex, text)


@pytest.mark.parametrize("text", ["2026-01-01T00:00:00Z", "2026-01-01t00:00:00.123456789+05:30",
                                  "2026-06-30T23:00:00-07:00"])
def test_timestamp_regex_accepts_what_the_pipeline_accepts(text):
    parse_rfc3339(text)
    assert re.match(templates.TIMESTAMP.regex, text)


@pytest.mark.parametrize("text", ["2026-01-01", "2026-01-01T00:00:00", "2026-01-01 00:00:00Z",
                                  "2026-01-01T00:00:00+0530", "1767225600"])
def test_timestamp_regex_rejects_what_the_pipeline_rejects(text):
    with pytest.raises(ValueError):
        parse_rfc3339(text)
    assert not re.match(templates.TIMESTAMP.regex, text)


def test_a_flag_without_a_value_cannot_become_a_parameter():
    recompute = templates.FLEX_TEMPLATES["recompute_usage"]
    unlisted = templates.FlexTemplate(
        recompute.pipeline, recompute.options_class, streaming=False, required=recompute.required,
        not_parameters={k: v for k, v in recompute.not_parameters.items() if k != "dirty"})
    with pytest.raises(templates.TemplateError, match="--dirty is a flag"):
        templates.metadata(unlisted)


# ---------------------------------------------------------------- spec, offline


def test_gcloud_builds_each_spec_offline(tmp_path):
    with ThreadPoolExecutor(len(TEMPLATES)) as pool:
        specs = list(pool.map(
            lambda t: templates.build([t.pipeline], IMAGE, "gs://tallyflow-test", tmp_path)[0],
            TEMPLATES))
    for template, path in zip(TEMPLATES, specs):
        raw = path.read_text()
        json_format.Parse(raw, dataflow_v1beta3.ContainerSpec.pb()(), ignore_unknown_fields=False)
        spec = json.loads(raw)
        image = IMAGE.format(pipeline=template.pipeline)
        assert spec["image"] == image
        assert spec["sdkInfo"] == {"language": "PYTHON"}
        assert spec["metadata"] == committed_metadata(template)  # streaming fields included
        environment = spec["defaultEnvironment"]
        assert environment["sdkContainerImage"] == image  # one image: launcher and worker
        if template.streaming:
            assert environment["enableStreamingEngine"] is True
            assert environment["streamingMode"] == "STREAMING_MODE_EXACTLY_ONCE"
        else:
            assert "streamingMode" not in environment


def test_template_build_refuses_a_bucket_that_is_not_gcs(capsys):
    with pytest.raises(SystemExit) as exit_:
        templates.main(["build", "--bucket", "tallyflow-test"])
    assert exit_.value.code == 2
    assert "--bucket must be gs://NAME" in capsys.readouterr().err


def test_dockerfile_makes_one_image_launcher_and_worker(template):
    text = (template.folder / "Dockerfile").read_text()
    assert f"FROM {templates.LAUNCHER_BASE}:" in text
    assert re.search(rf"FROM apache/beam_python3\.11_sdk:{re.escape(beam.__version__)}\n", text)
    assert f"ENV TALLYFLOW_PIPELINE={template.pipeline}\n" in text
    assert "ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/templates/launch.py\n" in text
    assert "ENV FLEX_TEMPLATE_PYTHON_SETUP_FILE=/template/setup.py\n" in text
    assert text.rstrip().endswith('ENTRYPOINT ["/opt/apache/beam/boot"]')
    for copied in re.findall(r"^COPY (?!--)(\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied


# ---------------------------------------------------------------- the launch path


def launch(pipeline: str, arguments: list[str]) -> subprocess.CompletedProcess:
    """templates/launch.py as the Flex Template launcher runs it (FLEX_TEMPLATE_PYTHON_PY_FILE)."""
    return subprocess.run([sys.executable, str(ROOT / templates.LAUNCHER), *arguments],
                          cwd=ROOT, env={**os.environ, "TALLYFLOW_PIPELINE": pipeline},
                          capture_output=True, text=True, timeout=120)


def streaming_parameters(only_required: bool) -> list[str]:
    """Parameters as the launcher passes them; the files are local (offline, no GCS)."""
    template = templates.FLEX_TEMPLATES["streaming_usage"]
    local = {"meters": EXAMPLE_METERS, "limits": examples.LIMITS, "prices": examples.PRICES}
    args = []
    for p in committed_metadata(template)["parameters"]:
        if only_required and p["isOptional"]:
            continue
        value = str(local[p["name"]]) if p["name"] in local else sample(template, p)
        if p["name"] == "bigquery_write_method":
            value = "STREAMING_INSERTS"  # STORAGE_WRITE_API needs the Java expansion service
        args.append(f"--{p['name']}={value}")
    return args


def test_the_image_entry_point_launches_each_pipeline():
    image = IMAGE.format(pipeline="streaming_usage")
    runs = {
        "streaming, required parameters": ("streaming_usage", DATAFLOW + [
            f"--sdk_container_image={image}", *streaming_parameters(only_required=True)]),
        "streaming, every parameter": ("streaming_usage", DATAFLOW + [
            f"--sdk_container_image={image}", *streaming_parameters(only_required=False)]),
        # recompute's run() reaches BigQuery (staging table) before building: its
        # Dataflow translation is tested at build() level in test_dataflow_translation.py
        "recompute, entry point": ("recompute_usage", ["--help"]),
    }
    with ThreadPoolExecutor(len(runs)) as pool:
        done = dict(zip(runs, pool.map(lambda run: launch(*run), runs.values())))
    for name, result in done.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
    assert "--period_start" in done["recompute, entry point"].stdout
