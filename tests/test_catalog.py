"""Meter catalog validation: errors name the meter and the field."""
import pytest

from schemas.catalog import CatalogError, JsonPath, MISSING, load_catalog, parse_catalog

VALID = {"key": "tokens", "event_type": "llm.completion", "aggregation": "SUM",
         "value_property": "$.tokens", "group_by": {"model": "$.model"}}


def error_of(*meters) -> str:
    with pytest.raises(CatalogError) as e:
        parse_catalog({"meters": list(meters)})
    return str(e.value)


def test_example_catalog_loads(example_catalog):
    keys = [m.key for m in example_catalog.meters]
    assert keys == ["api_requests", "bytes_out", "llm_input_tokens", "llm_output_tokens",
                    "llm_cost_usd", "active_users", "peak_connections", "storage_gb"]
    assert [m.key for m in example_catalog.meters_for("api.request")] == [
        "api_requests", "bytes_out"]
    assert example_catalog.meters_for("unknown.type") == ()


@pytest.mark.parametrize("change,expected", [
    ({"key": "Tokens"}, "meters[0] (Tokens).key: required; lowercase"),
    ({"key": "9tokens"}, "meters[0] (9tokens).key:"),
    ({"key": None}, "meters[0].key: required"),
    ({"aggregation": "AVG"}, "meters[0] (tokens).aggregation: must be one of"),
    ({"event_type": ""}, "meters[0] (tokens).event_type:"),
    ({"value_property": None}, "meters[0] (tokens).value_property: required for SUM"),
    ({"value_property": "tokens"}, "meters[0] (tokens).value_property:"),
    ({"value_property": "$..tokens"}, "meters[0] (tokens).value_property:"),
    ({"aggregation": "COUNT"}, "meters[0] (tokens).value_property: COUNT counts events"),
    ({"group_by": {"my model": "$.model"}}, "meters[0] (tokens).group_by.my model:"),
    ({"group_by": {"model": "model"}}, "meters[0] (tokens).group_by.model:"),
    ({"group_by": ["model"]}, "meters[0] (tokens).group_by:"),
    ({"precision": "FLOAT64"}, "meters[0] (tokens).precision:"),
    ({"allow_negative": "yes"}, "meters[0] (tokens).allow_negative:"),
    ({"unit": 5}, "meters[0] (tokens).unit:"),
    ({"valu_property": "$.x"}, "meters[0] (tokens).valu_property: unknown field"),
])
def test_errors_name_meter_and_field(change, expected):
    assert expected in error_of({**VALID, **change})


def test_duplicate_keys_are_rejected():
    assert "meters[1] (tokens).key: duplicate" in error_of(VALID, VALID)


def test_catalog_shape_errors():
    for document in (None, [], {"meters": []}, {"meters": {}}, {"meters": [VALID], "x": 1}):
        with pytest.raises(CatalogError):
            parse_catalog(document)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("meters:\n  - key: x\n    event_type: t\n    aggregation: NOPE\n")
    with pytest.raises(CatalogError, match=r"bad.yaml: meters\[0\] \(x\).aggregation"):
        load_catalog(str(path))
    path.write_text("meters: [unclosed")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(str(path))


def test_jsonpath_subset():
    data = {"usage": {"input tokens": 5, "items": [{"n": 1}, {"n": 2}]}, "a-b": 3}
    assert JsonPath.parse("$.usage['input tokens']").find(data) == 5
    assert JsonPath.parse("$.usage.items[1].n").find(data) == 2
    assert JsonPath.parse("$.a-b").find(data) == 3
    assert JsonPath.parse("$.usage.missing").find(data) is MISSING
    assert JsonPath.parse("$.usage.items[5]").find(data) is MISSING
    assert JsonPath.parse("$.usage.items.n").find(data) is MISSING
