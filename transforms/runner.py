"""Which runner a pipeline runs on: the one answer launchers and transforms share."""
from __future__ import annotations


def is_dataflow(runner: str | None) -> bool:
    """Whether a `--runner` value (a name like DataflowRunner or TestDataflowRunner, or
    a class path) runs the job on Dataflow: there a launcher must not wait for the job,
    and Pub/Sub is read by Dataflow's native source, which honours `id_label` and
    `timestamp_attribute`."""
    return "dataflow" in (runner or "").lower()
