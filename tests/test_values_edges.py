"""Edges of values and times: the last value or instant accepted and the first rejected,
and the messages an operator reads in dead_letter (each pins a mutant that survived the
other tests, docs/testing.md)."""
from decimal import Decimal

import pytest

from schemas.values import (BIGNUMERIC_MAX, MAX_TIME_NS, MIN_TIME_NS, ValueProblem,
                            dumps_exact, parse_decimal, parse_duration, parse_rfc3339)
from tests.test_values import code_of


def test_messages_say_what_was_wrong():
    """The error message is what an operator reads in dead_letter or on the command line."""
    for value, kind in (({"n": 1}, "object"), ([1], "array")):
        with pytest.raises(ValueProblem, match=f"is a JSON {kind}, not a number"):
            parse_decimal(value)
    with pytest.raises(ValueError, match=r"ms, s, m, h or d \(e\.g\. 1h, 15m\)"):
        parse_duration("2x")


def test_range_edges_are_exact():
    """The largest values BigQuery stores are accepted, the next ones rejected."""
    assert parse_decimal(str(BIGNUMERIC_MAX), precision="BIGNUMERIC") == BIGNUMERIC_MAX
    assert parse_decimal("1E+38", precision="BIGNUMERIC") == Decimal("1E+38")
    assert code_of("6E+38", precision="BIGNUMERIC") == "VALUE_OUT_OF_RANGE"  # 39 digits
    just_over = str(BIGNUMERIC_MAX)[:-1] + "8"  # one unit of the 38th fraction digit more
    assert code_of(just_over, precision="BIGNUMERIC") == "VALUE_OUT_OF_RANGE"
    assert code_of("-" + just_over, precision="BIGNUMERIC", allow_negative=True) == \
        "VALUE_OUT_OF_RANGE"
    # trailing zeros are not fraction digits: 38 (or 9) significant ones are allowed
    assert parse_decimal("0." + "0" * 37 + "10", precision="BIGNUMERIC") == Decimal("1E-38")
    assert parse_decimal("0.0000000010") == Decimal("1E-9")
    assert code_of("0.0000000011") == "VALUE_OUT_OF_RANGE"


def test_value_messages_name_the_value_clipped_to_80_characters():
    with pytest.raises(ValueProblem, match=r"^value 1E\+39 is beyond NUMERIC range$"):
        parse_decimal("1E+39")
    with pytest.raises(ValueProblem,
                       match=r"^value 1\.0000000001 has more than 9 fraction digits \(NUMERIC\)$"):
        parse_decimal("1.0000000001")
    exactly = "x" * 80
    with pytest.raises(ValueProblem) as e:
        parse_decimal(exactly)
    assert str(e.value) == f"value {exactly!r} is not a decimal number"
    with pytest.raises(ValueProblem) as e:
        parse_decimal(exactly + "yz")
    assert str(e.value) == f"value {exactly + '...'!r} is not a decimal number"


def test_time_offsets_and_messages():
    east = parse_rfc3339("2026-11-02T23:59:00+23:59")
    assert type(east) is int and east == parse_rfc3339("2026-11-02T00:00:00Z")  # no float
    assert parse_rfc3339("2026-11-02T00:00:00-23:59") == parse_rfc3339("2026-11-02T23:59:00Z")
    for text in ("2026-11-02T00:00:00+24:00", "2026-11-02T00:00:00+23:60"):
        with pytest.raises(ValueError, match="offset out of range"):
            parse_rfc3339(text)
    with pytest.raises(ValueError, match="clock time out of range"):
        parse_rfc3339("2026-11-02T24:00:00Z")
    with pytest.raises(ValueError, match=r"^time must be a string, got int$"):
        parse_rfc3339(1730538000)
    with pytest.raises(ValueError, match=r"^time 'yesterday' is not RFC 3339 with an offset "
                                         r"\(e\.g\. 2026-01-01T00:00:00Z\)$"):
        parse_rfc3339("yesterday")
    with pytest.raises(ValueError, match=r"^time '2026-02-30T00:00:00Z': day is out of range"):
        parse_rfc3339("2026-02-30T00:00:00Z")


def test_dumps_exact_keeps_unicode_and_sorts_nested_keys():
    doc = {"b": [{"z": 1, "y": "ü"}], "é": {"d": Decimal("1.50"), "c": None}}
    assert dumps_exact(doc, sort_keys=True) == \
        '{"b":[{"y":"ü","z":1}],"é":{"c":null,"d":1.50}}'
    assert dumps_exact(doc) == '{"b":[{"z":1,"y":"ü"}],"é":{"d":1.50,"c":null}}'


@pytest.mark.parametrize("value,message", [
    (None, "value is null"),
    (True, "value is a boolean (true)"),
    ("NaN", "value 'NaN' is not finite"),
    (Decimal("-Infinity"), "value -Infinity is not finite"),
    ("12 kB", "value '12 kB' is not a decimal number"),
    (1.5, "value of type float is not a number"),
])
def test_value_messages(value, message):
    with pytest.raises(ValueProblem) as e:
        parse_decimal(value)
    assert str(e.value) == message


def test_the_first_and_last_representable_instants():
    # the last day is 9999-12-30: a window of 9999-12-31 would end in year 10000
    assert parse_rfc3339("9999-12-30T23:59:59.999999999Z") == MAX_TIME_NS
    assert parse_rfc3339("0001-01-01T00:00:00Z") == MIN_TIME_NS
    for text in ("0001-01-01T00:00:00+00:01", "9999-12-30T23:59:59-00:01",
                 "9999-12-31T00:00:00Z"):
        with pytest.raises(ValueError, match="is outside"):
            parse_rfc3339(text)


def test_a_value_of_no_json_type_is_not_numeric():
    assert code_of(1.5) == code_of(object()) == "VALUE_NOT_NUMERIC"
