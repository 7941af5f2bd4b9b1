"""One answer to "does this run on Dataflow?", for launchers and the Pub/Sub source alike."""
import pytest

from transforms.runner import is_dataflow


@pytest.mark.parametrize("runner", [
    "DataflowRunner", "dataflow", "TestDataflowRunner",
    "apache_beam.runners.dataflow.dataflow_runner.DataflowRunner"])
def test_dataflow_runners(runner):
    assert is_dataflow(runner)


@pytest.mark.parametrize("runner", [None, "", "DirectRunner", "direct", "PrismRunner",
                                    "FlinkRunner", "apache_beam.runners.direct.DirectRunner"])
def test_other_runners(runner):
    assert not is_dataflow(runner)
