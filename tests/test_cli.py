"""One error policy for every command: exit codes and one-line reasons."""
import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from pipelines import policy
from tallyflow.local.stack import StackError
from schemas.catalog import CatalogError
from transforms.bigquery_target import BigQueryTarget
from transforms.files import UnreadableInput


def exit_of(capsys, work, **kwargs):
    code = policy.run_command("tallyflow test", work, **kwargs)
    return code, capsys.readouterr().err.strip().splitlines()


def raising(error):
    def work():
        raise error
    return work


def test_success_and_a_difference_keep_their_codes(capsys):
    assert exit_of(capsys, lambda: None) == (0, [])
    assert exit_of(capsys, lambda: policy.DIFFERENCE) == (1, [])


@pytest.mark.parametrize("error", [ValueError("--meters is required"),
                                   CatalogError("--meters is required")])
def test_bad_arguments_exit_2_with_the_reason(capsys, error):
    assert exit_of(capsys, raising(error)) == (2, ["tallyflow test: --meters is required"])


def test_a_command_names_its_own_configuration_errors(capsys):
    class Broken(Exception):
        pass

    assert exit_of(capsys, raising(Broken("no bucket")), usage_errors=(Broken,)) == (
        2, ["tallyflow test: no bucket"])


def test_unreadable_input_exits_3_naming_the_file(capsys):
    error = UnreadableInput("cannot read /data/a.jsonl.gz: EOFError: truncated")
    assert exit_of(capsys, raising(error)) == (
        3, ["tallyflow test: cannot read /data/a.jsonl.gz: EOFError: truncated"])


def test_a_failing_service_call_names_the_service_and_the_call(capsys):
    client = BigQueryTarget("tallyflow-test", "metering", "http://127.0.0.1:9").client()
    code, lines = exit_of(capsys, lambda: client.get_dataset("metering", retry=None, timeout=2))
    assert code == 3 and len(lines) == 1
    assert lines[0].startswith("tallyflow test: BigQuery call Client.get_dataset failed: "
                               "ConnectionError: "), lines


def test_a_failure_a_command_detected_says_its_own_reason(capsys):
    assert exit_of(capsys, raising(StackError("Java is not installed"))) == (
        3, ["tallyflow test: Java is not installed"])


def broken_step(element):
    return 1 // (len(element) - 1)


def test_a_failing_pipeline_step_is_named_with_where_it_failed(capsys, monkeypatch):
    monkeypatch.delenv(policy.DEBUG_ENV, raising=False)

    def work():
        with TestPipeline() as p:
            _ = p | beam.Create(["x"]) | "Broken" >> beam.Map(broken_step)

    code, lines = exit_of(capsys, work)
    assert code == 3
    assert lines[-1] == ("tallyflow test: unexpected ZeroDivisionError in pipeline step "
                         f"'Broken' at tests/test_cli.py:{broken_step.__code__.co_firstlineno + 1}"
                         " in broken_step: integer division or modulo by zero "
                         f"(set {policy.DEBUG_ENV}=1 for the traceback)")


def test_a_value_error_inside_a_step_is_not_a_bad_argument(capsys):
    def work():
        with TestPipeline() as p:
            _ = p | beam.Create(["x"]) | "Parse" >> beam.Map(int)

    code, lines = exit_of(capsys, work)
    assert code == 3
    assert lines[-1].startswith("tallyflow test: unexpected ValueError in pipeline step "
                                "'Parse' at ")


def test_an_unexpected_error_says_its_type_and_place_and_debug_shows_the_traceback(
        capsys, monkeypatch):
    def work():
        return [][1]

    line = work.__code__.co_firstlineno + 1
    monkeypatch.delenv(policy.DEBUG_ENV, raising=False)
    assert exit_of(capsys, work) == (3, [
        f"tallyflow test: unexpected IndexError at tests/test_cli.py:{line} in work: "
        f"list index out of range (set {policy.DEBUG_ENV}=1 for the traceback)"])
    monkeypatch.setenv(policy.DEBUG_ENV, "1")
    code, lines = exit_of(capsys, work)
    assert code == 3 and lines[0] == "Traceback (most recent call last):"
    assert lines[-1].startswith("tallyflow test: unexpected IndexError at ")


def test_status_of_a_stack_that_is_not_there_is_a_runtime_failure(tmp_path, capsys):
    from tallyflow.local import stack as local_stack

    assert local_stack.main(["status", "--run-dir", str(tmp_path)]) == policy.RUNTIME_FAILURE
