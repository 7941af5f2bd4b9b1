"""Aggregation and price-model kinds are `str` enums: stored and printed as the text
the catalog and the price book spell, and never pickled into a streaming job's state."""
import json
import pickle

import pytest

from schemas.aggregation import Aggregation
from schemas.catalog import parse_catalog, parse_catalog_text
from schemas.events import Limits, parse_payload
from schemas.pricing import PriceModel, parse_price_book_text
from schemas.values import parse_rfc3339
from tests.conftest import ALL_AGGREGATIONS, event, line
from transforms.aggregate import ReadMetersFn

CATALOG_YAML = """
meters:
  - key: calls
    event_type: call
    aggregation: COUNT
  - key: amount
    event_type: call
    aggregation: SUM
    value_property: $.amount
"""


@pytest.mark.parametrize("kind", [*Aggregation, *PriceModel])
def test_a_kind_is_its_text_wherever_it_goes(kind):
    text = kind.value
    assert kind == text and hash(kind) == hash(text) and {text: 1}[kind] == 1
    assert f"{kind}" == str(kind) == "%s" % kind == text and type(str(kind)) is str
    assert json.dumps({"k": kind}) == json.dumps({"k": text})


def test_the_catalog_keeps_the_members_its_text_names():
    catalog = parse_catalog_text(CATALOG_YAML)
    assert [m.aggregation for m in catalog.meters] == [Aggregation.COUNT, Aggregation.SUM]
    assert all(type(m.aggregation) is Aggregation for m in catalog.meters)
    assert [m.numeric for m in catalog.meters] == [False, True]


def test_price_models_are_members_and_print_as_the_book_spells_them():
    book = parse_price_book_text("""
plans:
  - id: basic
    currency: EUR
    versions:
      - version: 1
        starting_at: "2026-01-01T00:00:00Z"
        prices:
          - {id: calls, meter: calls, model: per_unit, unit_amount: "0.01"}
assignments:
  - {subject: acme, plan: basic, starting_at: "2026-01-01T00:00:00Z"}
""")
    (price,) = book.plans[0].versions[0].prices
    assert type(price.kind) is PriceModel and price.kind == "per_unit"


def test_readings_carry_the_aggregation_as_plain_text():
    """A streaming reading (and so its accumulator) holds no class of tallyflow's: runner
    state pickled by this release must load whatever the enum's module becomes."""
    catalog = parse_catalog(ALL_AGGREGATIONS)
    doc = event(id="e", data={"region": "eu", "amount": "2", "user": "u1"})
    (parsed,) = parse_payload(line(doc), "p", (), catalog, Limits(now_ns=None),
                              parse_rfc3339("2026-11-02T10:00:00Z"))
    reader = ReadMetersFn(catalog)
    kinds = [value.value[1][0] for value in reader.process(parsed)]
    assert sorted(kinds) == sorted(m["aggregation"] for m in ALL_AGGREGATIONS["meters"]
                                   if m["event_type"] == "call")
    assert all(type(kind) is str for kind in kinds)
    assert b"schemas" not in pickle.dumps([value.value for value in reader.process(parsed)])
