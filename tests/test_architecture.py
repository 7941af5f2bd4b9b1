"""The package boundaries: what Dataflow runs (`pipelines/`, `transforms/`, `schemas/`)
stays apart from the command-line product around it (`tallyflow/`), and the product
works when installed, outside a checkout."""
import ast
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

WORKER_PACKAGES = ("pipelines", "transforms", "schemas")
PIPELINES = ("pipelines.streaming_usage", "pipelines.recompute_usage", "pipelines.rate_usage")


def imported_modules(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_worker_code_imports_nothing_of_the_command_line_product():
    offending = [(str(path.relative_to(ROOT)), module)
                 for package in WORKER_PACKAGES
                 for path in sorted((ROOT / package).rglob("*.py"))
                 for module in imported_modules(path)
                 if module.split(".")[0] == "tallyflow"]
    assert offending == []


def test_importing_the_pipelines_loads_no_process_manager_or_report_renderer():
    probe = (f"import sys; import {', '.join(PIPELINES)}; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tallyflow'))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    assert done.stdout.strip() == "[]"


def test_the_worker_image_copies_only_the_pipeline_code():
    for dockerfile in sorted((ROOT / "templates").glob("*/Dockerfile")):
        copied = re.findall(r"^COPY (?!--)(\S+)", dockerfile.read_text(), re.M)
        assert sorted(copied) == sorted(["setup.py", *WORKER_PACKAGES, "templates/launch.py"]), \
            dockerfile


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """tallyflow installed with pip into a folder of its own (its dependencies are the
    test environment's), to be run from a directory that is not a checkout."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    return target


def run_installed(installed, cwd, *argv):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_an_installed_tallyflow_runs_outside_a_checkout(installed, tmp_path):
    where = run_installed(installed, tmp_path, "-c",
                          "import pipelines, tallyflow.cli, tallyflow.examples as e; "
                          "print(pipelines.__file__); print(e.METERS); print(e.EVENTS)")
    assert where.returncode == 0, where.stderr
    package, meters, events = where.stdout.split()
    for path in (package, meters, events):
        assert path.startswith(str(installed)), path
    out = tmp_path / "out"
    done = run_installed(installed, tmp_path, "-m", "tallyflow.cli", "recompute",
                         "--meters", meters, "--input", events, "--output_dir", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lines_read"] == sum(1 for line in open(events) if line.strip())
    usage = (out / "usage.jsonl").read_text().splitlines()
    assert len(usage) == summary["usage_rows"] > 0


def test_an_installed_tallyflow_names_its_own_frame_as_where_an_error_happened(installed,
                                                                                tmp_path):
    # yaml's frames sit in site-packages too, beside the installed tallyflow
    probe = ("import yaml; from pipelines.policy import run_command; "
             "run_command('probe', lambda: yaml.safe_load('a: [').items())")
    done = run_installed(installed, tmp_path, "-c", probe)
    reason = done.stderr.strip()
    assert reason.startswith("probe: unexpected ParserError at pipelines/policy.py:"), reason
    assert " in run_command: " in reason
