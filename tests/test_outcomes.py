"""File rows: a usage row's JSONL line is exactly what json.dumps makes of it (sorted keys,
dimensions as a nested object, non-ASCII kept but for the line breaks str.splitlines()
knows), whatever its strings hold."""
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Rejection
from transforms.outcomes import dead_letter_line, usage_line

# Raw text in a JSON string, but str.splitlines() ends a line at each: written escaped.
LINE_BREAKS = "\x85\u2028\u2029"
# any text JSON can carry: quotes, backslashes, control and non-ASCII characters, U+2028
TEXT = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from(LINE_BREAKS),
               max_size=12)


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
    for character in LINE_BREAKS:
        expected = expected.replace(character, f"\\u{ord(character):04x}")
    assert usage_line(row) == expected
    assert usage_line(row).splitlines() == [usage_line(row)]
    assert json.loads(usage_line(row)) == {**row, "dimensions": json.loads(row["dimensions"])}


def test_a_usage_line_writes_every_column_of_the_usage_row():
    """usage_line names its columns itself: a column `usage_row` gains must reach the file."""
    from decimal import Decimal

    from schemas.metering import usage_row

    row = usage_row(("cust-1", "api_requests", '{"method": "GET"}'), 0, 3_600 * 10 ** 9,
                    (Decimal("12.5"), 3, "0" * 32))
    assert json.loads(usage_line(row)) == {**row, "dimensions": {"method": "GET"}}


def test_a_dead_letter_line_is_one_line_whatever_its_payload_holds():
    """A payload may hold any of LINE_BREAKS raw (valid JSON, valid UTF-8): dead_letter.jsonl
    still has one line per rejection when read with str.splitlines()."""
    payload = '{"id": "a\x85b", "subject": "c\u2028d", "x": "\u2029"}'
    line = dead_letter_line(Rejection("MISSING_ATTRIBUTE", "required attribute time is missing",
                                      payload, "f.jsonl:3", None, "a\x85b"))
    assert line.splitlines() == [line]
    assert json.loads(line)["payload"] == payload
    assert json.loads(line)["event_id"] == "a\x85b"
