"""tallyflow: exact usage metering on Apache Beam.

The package is installable so Dataflow workers get the same code the launcher
runs (Flex Templates use FLEX_TEMPLATE_PYTHON_SETUP_FILE with this file).
"""
from setuptools import find_packages, setup

# `tallyflow export` and `reconcile --provider`: the billing providers' official SDKs
# (docs/export.md), and Secret Manager's for --api-key-secret (apache-beam[gcp] brings it
# too; named here because export calls it); the tests run them against local servers, so
# `test` includes them.
EXPORT = ["stripe>=16.1,<17", "orb-billing>=4.90,<5", "lago-python-client>=1.55,<2",
          "google-cloud-secret-manager>=2.20,<3"]

setup(
    name="tallyflow",
    version="0.1.0",
    description="Exact usage metering: CloudEvents from Pub/Sub to BigQuery with Apache Beam",
    python_requires=">=3.11,<3.14",
    # The worker image copies schemas/, transforms/ and pipelines/ only (templates/*/Dockerfile);
    # tallyflow/ is the command-line product around them, with its example files.
    packages=find_packages(include=["schemas", "schemas.*", "transforms", "transforms.*",
                                    "pipelines", "pipelines.*", "tallyflow", "tallyflow.*"]),
    package_data={"tallyflow.examples": ["*.yaml", "*.jsonl"]},
    install_requires=[
        "apache-beam[gcp]==2.77.*",
        "orjson>=3.8",
        # content-encoding: zstd (schemas/encoding.py); Beam depends on it too
        "zstandard>=0.18",
        "PyYAML>=6.0",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "duckdb>=1.1",
            "pandas>=2.0",
            # CloudEvents conformance (tests/test_cloudevents.py): the official SDK writes the events
            "cloudevents>=1.9",
            # tests/test_architecture.py installs tallyflow with pip, without build isolation
            "wheel",
        ] + EXPORT,
        "export": EXPORT,
        # profiling the benchmarks (BENCHMARKS.md): py-spy record -- python ...
        "bench": ["py-spy>=0.4"],
        # mutation score of the bill-deciding modules: benchmarks/mutation.py, docs/testing.md
        "mutation": ["mutmut>=3.8,<4"],
    },
    entry_points={"console_scripts": ["tallyflow=tallyflow.cli:main"]},
)
