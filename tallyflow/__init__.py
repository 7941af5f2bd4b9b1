"""The tallyflow command-line product: the CLI, reports, the local stack and the
template builder. Not shipped to Dataflow workers, which run only `pipelines/`."""
