"""Exact numbers and times: the decimal and RFC 3339 edge cases billing depends on."""
from decimal import Decimal

import pytest

from schemas.values import (EXACT, MAX_TIME_NS, ValueProblem, dumps_exact, format_decimal,
                            format_time, loads_exact, parse_decimal, parse_duration,
                            parse_rfc3339)


def code_of(value, **kwargs):
    with pytest.raises(ValueProblem) as e:
        parse_decimal(value, **kwargs)
    return e.value.code


def test_json_numbers_parse_exactly_never_as_floats():
    doc = loads_exact(b'{"a": 0.1, "b": 123456789012345678901234567890, "c": 1E3, "d": 7}')
    assert doc == {"a": Decimal("0.1"), "b": 123456789012345678901234567890,
                   "c": Decimal("1E3"), "d": 7}
    assert isinstance(doc["a"], Decimal) and isinstance(doc["b"], int)
    assert isinstance(doc["c"], Decimal) and isinstance(doc["d"], int)


def test_numbers_and_strings_give_the_same_value():
    assert parse_decimal(Decimal("0.000000001")) == parse_decimal("0.000000001")
    assert parse_decimal(loads_exact(b"1E3")) == parse_decimal("1E3") == Decimal(1000)
    assert format_decimal(parse_decimal("1E3")) == "1000"


def test_nine_fraction_digits_in_1e9_steps_sum_exactly():
    step = parse_decimal("0.000000001")
    total = Decimal(0)
    for _ in range(1000):
        total = EXACT.add(total, step)
    assert total == Decimal("0.000001")
    assert format_decimal(total) == "0.000001"


def test_29_digit_integers_and_sums_above_2_pow_63():
    big = parse_decimal("99999999999999999999999999999")
    assert format_decimal(big) == "99999999999999999999999999999"
    assert format_decimal(parse_decimal("99999999999999999999999999999.999999999")) == \
        "99999999999999999999999999999.999999999"
    over = parse_decimal(2 ** 63 - 1)
    assert format_decimal(EXACT.add(over, over)) == str(2 * (2 ** 63 - 1))
    # a 38-digit sum would be rounded by Python's default 28-digit context
    assert format_decimal(EXACT.add(big, Decimal("0.000000001"))) == \
        "99999999999999999999999999999.000000001"


def test_out_of_range_values_are_rejected_not_rounded():
    assert code_of("100000000000000000000000000000") == "VALUE_OUT_OF_RANGE"  # 30 digits
    assert code_of("0.0000000001") == "VALUE_OUT_OF_RANGE"  # 10 fraction digits
    assert code_of("1E+999999999999") == "VALUE_OUT_OF_RANGE"
    assert code_of("1E-999999999999") == "VALUE_OUT_OF_RANGE"
    # trailing zeros are not extra precision
    assert parse_decimal("1.50000000000000") == Decimal("1.5")
    assert parse_decimal("0E-30") == 0
    # BIGNUMERIC admits 38 fraction digits and 38 integer digits
    assert parse_decimal("0." + "0" * 37 + "1", precision="BIGNUMERIC") == Decimal("1E-38")
    assert code_of("1E+39", precision="BIGNUMERIC") == "VALUE_OUT_OF_RANGE"


@pytest.mark.parametrize("value,code", [
    (None, "VALUE_MISSING"),
    ({"n": 1}, "VALUE_NOT_SCALAR"),
    ([1], "VALUE_NOT_SCALAR"),
    (True, "VALUE_NOT_NUMERIC"),
    ("", "VALUE_NOT_NUMERIC"),
    ("12 kB", "VALUE_NOT_NUMERIC"),
    ("1_000", "VALUE_NOT_NUMERIC"),
    (" 1", "VALUE_NOT_NUMERIC"),
    ("0x10", "VALUE_NOT_NUMERIC"),
    ("\uff11\uff12", "VALUE_NOT_NUMERIC"),  # fullwidth digits: Decimal() would take them
    ("\u0663", "VALUE_NOT_NUMERIC"),  # Arabic-Indic three
    ("NaN", "VALUE_NOT_FINITE"),
    ("-Infinity", "VALUE_NOT_FINITE"),
    ("inf", "VALUE_NOT_FINITE"),
    (Decimal("NaN"), "VALUE_NOT_FINITE"),
    (-1, "VALUE_NEGATIVE"),
    ("-0.5", "VALUE_NEGATIVE"),
])
def test_invalid_values_have_stable_codes(value, code):
    assert code_of(value) == code


def test_negative_allowed_when_meter_says_so_and_minus_zero_is_zero():
    assert parse_decimal("-2.5", allow_negative=True) == Decimal("-2.5")
    assert format_decimal(parse_decimal("-0")) == "0"


def test_nan_literal_in_json_is_a_value_problem_not_malformed_json():
    doc = loads_exact(b'{"v": NaN}')
    assert code_of(doc["v"]) == "VALUE_NOT_FINITE"


def test_same_instant_in_different_offsets():
    z = parse_rfc3339("2026-11-02T09:00:00Z")
    assert parse_rfc3339("2026-11-02T10:00:00+01:00") == z
    assert parse_rfc3339("2026-11-02T04:00:00-05:00") == z
    assert parse_rfc3339("2026-11-02t09:00:00z") == z
    assert parse_rfc3339("2026-11-02T09:00:00-00:00") == z
    assert parse_rfc3339("2026-11-02T14:45:00+05:45") == z


def test_fractions_are_kept_to_the_nanosecond():
    t = parse_rfc3339("2026-11-02T09:59:59.999999999Z")
    assert t - parse_rfc3339("2026-11-02T09:59:59.999999998Z") == 1
    assert format_time(t) == "2026-11-02T09:59:59.999999999Z"
    assert format_time(parse_rfc3339("2026-11-02T09:00:00.5000Z")) == "2026-11-02T09:00:00.5Z"
    assert format_time(parse_rfc3339("9999-12-31T23:59:59.9999999999Z")) == \
        "9999-12-31T23:59:59.999999999Z"
    assert parse_rfc3339("9999-12-31T23:59:59.999999999Z") == MAX_TIME_NS


@pytest.mark.parametrize("text", [
    "2026-11-02T09:00:00", "2026-11-02", "2026-11-02 09:00:00Z", "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z", "2026-11-02T24:00:00Z", "2026-11-02T09:60:00Z",
    "2026-11-02T09:00:60Z", "2026-11-02T09:00:00+24:00", "0001-01-01T00:00:00+01:00",
    "yesterday", "1730538000", "2026-11-02T09:00:00.Z",
    "\u0662\u0660\u0662\u0666-11-02T09:00:00Z",  # Arabic-Indic year: int() would take it
])
def test_bad_times(text):
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_non_string_time_is_bad():
    with pytest.raises(ValueError):
        parse_rfc3339(1730538000)


def test_durations():
    assert parse_duration("1h") == 3600 * 10 ** 9
    assert parse_duration("15m") == 900 * 10 ** 9
    assert parse_duration("1d") == 86400 * 10 ** 9
    for bad in ("0h", "1x", "h", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_dumps_exact_keeps_the_spelling_of_numbers():
    doc = loads_exact(b'{"b":1.50,"a":[1E3,7,"x"]}')
    assert dumps_exact(doc) == '{"b":1.50,"a":[1E+3,7,"x"]}'
    assert dumps_exact(doc, sort_keys=True) == '{"a":[1E+3,7,"x"],"b":1.50}'
    assert loads_exact(dumps_exact(doc)) == doc
