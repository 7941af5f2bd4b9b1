"""`tallyflow export` and `reconcile --provider` on an install without the `export`
extra: a one-line usage error (exit 2) saying to install `tallyflow[export]`, not an
"unexpected ModuleNotFoundError". Each run is a fresh interpreter in which a
meta-path finder (installed by a `sitecustomize` on its path) makes the named
top-level modules unimportable, as they are when the extra is not installed."""
import os
import subprocess
import sys

import pytest

from pipelines.policy import BAD_ARGUMENTS
from tests.conftest import ROOT

BLOCKER = '''
import os, sys

BLOCKED = set(os.environ["BLOCKED_MODULES"].split(","))


class Missing:
    """Finds nothing for a blocked top-level module: it is not installed."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or name in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Missing)
'''
PERIOD = ["--period-start", "2026-11-01T00:00:00Z", "--period-end", "2026-11-02T00:00:00Z",
          "--bigquery_project", "tallyflow-test", "--bigquery_endpoint", "http://127.0.0.1:9"]


def run_without(tmp_path, blocked: list[str], argv: list[str]):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
           "BLOCKED_MODULES": ",".join(blocked), "STRIPE_API_KEY": "sk_test_x",
           "ORB_API_KEY": "k", "LAGO_API_KEY": "k"}
    env.pop("TALLYFLOW_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "tallyflow.cli", *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command,provider,sdk", [
    ("export --to", "stripe", "stripe"),
    ("export --to", "orb", "orb"),
    ("reconcile --provider", "lago", "lago_python_client"),
])
def test_a_missing_sdk_is_a_usage_error_naming_the_extra(tmp_path, command, provider, sdk):
    done = run_without(tmp_path, [sdk], [*command.split(), provider, *PERIOD])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == BAD_ARGUMENTS, done.stderr
    assert len(lines) == 1 and "tallyflow[export]" in lines[0] and sdk in lines[0]
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr


def test_a_missing_dependency_of_an_sdk_is_the_same_usage_error(tmp_path):
    """The class, not the one module: Orb's SDK without its own HTTP library."""
    done = run_without(tmp_path, ["httpx"], ["export", "--to", "orb", *PERIOD])
    assert done.returncode == BAD_ARGUMENTS, done.stderr
    assert "tallyflow[export]" in done.stderr and "'httpx'" in done.stderr


def test_without_secret_manager_the_secret_path_is_the_same_usage_error(tmp_path):
    done = run_without(tmp_path, ["google.cloud.secretmanager"],
                       ["export", "--to", "stripe", *PERIOD,
                        "--api-key-secret", "projects/p/secrets/s/versions/1"])
    assert done.returncode == BAD_ARGUMENTS, done.stderr
    assert "tallyflow[export]" in done.stderr and "secretmanager" in done.stderr
