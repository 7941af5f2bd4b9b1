"""Shared test fixtures: the example catalog and an event builder."""
import json
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from schemas.catalog import load_catalog, parse_catalog

# benchmarks/mutation.py runs the property test against every mutant: a failing
# example is enough there, shrinking it would cost minutes per mutant.
settings.register_profile("mutation", phases=(Phase.explicit, Phase.reuse, Phase.generate))

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_METERS = ROOT / "tallyflow" / "examples" / "meters.yaml"

# A catalog with one meter per aggregation, used by transform and property tests.
ALL_AGGREGATIONS = {
    "meters": [
        {"key": "calls", "event_type": "call", "aggregation": "COUNT",
         "group_by": {"region": "$.region"}},
        {"key": "amount", "event_type": "call", "aggregation": "SUM",
         "value_property": "$.amount", "group_by": {"region": "$.region"}},
        {"key": "users", "event_type": "call", "aggregation": "UNIQUE_COUNT",
         "value_property": "$.user"},
        {"key": "low", "event_type": "call", "aggregation": "MIN", "value_property": "$.amount"},
        {"key": "high", "event_type": "call", "aggregation": "MAX", "value_property": "$.amount"},
        {"key": "last", "event_type": "call", "aggregation": "LATEST",
         "value_property": "$.amount"},
        {"key": "balance", "event_type": "ledger", "aggregation": "SUM",
         "value_property": "$.delta", "allow_negative": True},
    ]
}


@pytest.fixture(scope="session")
def example_catalog():
    return load_catalog(str(EXAMPLE_METERS))


@pytest.fixture(scope="session")
def catalog():
    return parse_catalog(ALL_AGGREGATIONS)


def event(id="e1", source="//test", type="call", subject="acme",
          time="2026-11-02T09:00:00Z", data=None, **extra) -> dict:
    doc = {"specversion": "1.0", "id": id, "source": source, "type": type,
           "subject": subject, "time": time, **extra}
    if data is not None:
        doc["data"] = data
    return doc


def line(doc) -> bytes:
    return json.dumps(doc).encode()
