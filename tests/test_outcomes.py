"""File rows: a usage row's JSONL line is exactly what json.dumps makes of it (sorted keys,
dimensions as a nested object, non-ASCII kept), whatever its strings hold."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.outcomes import usage_line

# any text JSON can carry: quotes, backslashes, control and non-ASCII characters, U+2028
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def usage_rows(draw) -> dict:
    dimensions = draw(st.dictionaries(TEXT, TEXT | st.integers() | st.none(), max_size=3))
    return {"subject": draw(TEXT), "meter": draw(TEXT),
            "dimensions": json.dumps(dimensions, ensure_ascii=draw(st.booleans())),
            "window_start": draw(TEXT), "window_end": draw(TEXT), "value": draw(TEXT),
            "event_count": draw(st.integers(min_value=0, max_value=10 ** 30)),
            "fingerprint": draw(TEXT)}


@settings(max_examples=400, deadline=None)
@given(usage_rows())
def test_a_usage_line_is_the_rows_sorted_json(row):
    expected = json.dumps({**row, "dimensions": json.loads(row["dimensions"])},
                          sort_keys=True, ensure_ascii=False)
    assert usage_line(row) == expected
    assert json.loads(usage_line(row)) == {**row, "dimensions": json.loads(row["dimensions"])}


def test_a_usage_line_writes_every_column_of_the_usage_row():
    """usage_line names its columns itself: a column `usage_row` gains must reach the file."""
    from decimal import Decimal

    from schemas.metering import usage_row

    row = usage_row(("cust-1", "api_requests", '{"method": "GET"}'), 0, 3_600 * 10 ** 9,
                    (Decimal("12.5"), 3, "0" * 32))
    assert json.loads(usage_line(row)) == {**row, "dimensions": {"method": "GET"}}
