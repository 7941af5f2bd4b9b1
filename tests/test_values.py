"""Exact numbers and times: the decimal and RFC 3339 edge cases billing depends on."""
import enum
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import values
from schemas.values import (DECIMAL_TEXT, EXACT, MAX_TIME_NS, MIN_TIME_NS, ValueProblem, dumps_exact, format_decimal,
                            format_time, loads_exact, parse_decimal, parse_duration, parse_window,
                            plain_length, printable, UnrepresentableNumber,
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
    assert format_time(parse_rfc3339("9999-12-30T23:59:59.9999999999Z")) == \
        "9999-12-30T23:59:59.999999999Z"
    assert parse_rfc3339("9999-12-30T23:59:59.999999999Z") == MAX_TIME_NS


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


def test_years_before_1000_are_zero_padded():
    assert format_time(MIN_TIME_NS) == "0001-01-01T00:00:00Z"
    assert format_time(parse_rfc3339("0999-12-31T23:59:59.5Z")) == "0999-12-31T23:59:59.5Z"
    assert format_time(parse_rfc3339("0042-06-01T12:00:00+02:00")) == "0042-06-01T10:00:00Z"


@pytest.mark.parametrize("text,expected", [
    ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59.999999999Z"),
    ("2016-12-31T23:59:60.25Z", "2016-12-31T23:59:59.999999999Z"),
    ("2017-01-01T05:29:60+05:30", "2016-12-31T23:59:59.999999999Z"),
    ("2016-12-31T18:59:60-05:00", "2016-12-31T23:59:59.999999999Z"),
])
def test_a_leap_second_is_the_last_nanosecond_of_its_utc_day(text, expected):
    assert format_time(parse_rfc3339(text)) == expected


@pytest.mark.parametrize("text", ["2016-12-31T12:59:60Z", "2016-12-31T23:58:60Z",
                                  "2016-12-31T23:59:60+01:00", "2016-12-31T23:59:61Z"])
def test_a_sixtieth_second_elsewhere_is_a_bad_time(text):
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_windows_are_whole_seconds_that_divide_a_day():
    assert parse_window("1m") == 60 * 10 ** 9
    assert parse_window("1d") == 86400 * 10 ** 9
    for bad in ("7m", "7s", "2d", "500ms", "25h", "0s", "1x"):
        with pytest.raises(ValueError):
            parse_window(bad)


@pytest.mark.parametrize("seconds", [s for s in range(1, 86401) if 86400 % s == 0])
def test_every_window_of_every_event_time_can_be_written(seconds):
    """The first and last window of the accepted time range start and end within
    years 1..9999 for every size --window accepts (an odd size reached before year 1)."""
    window_ns = seconds * 10 ** 9
    first = MIN_TIME_NS - MIN_TIME_NS % window_ns
    last = MAX_TIME_NS - MAX_TIME_NS % window_ns + window_ns
    assert format_time(first) == "0001-01-01T00:00:00Z"
    assert format_time(last) <= "9999-12-31T00:00:00Z"


def test_the_decimal_grammar_is_ascii():
    assert DECIMAL_TEXT.match("12.5E-3") and not DECIMAL_TEXT.match("\u0661\u0662")


def test_huge_decimals_format_exactly_and_are_measured_without_writing():
    assert format_decimal(Decimal("1." + "0" * 1200)) == "1"
    assert format_decimal(Decimal("12" + "0" * 1200 + "E-1200")) == "12"
    assert plain_length(Decimal("1E999999999")) == 1_000_000_000
    assert plain_length(Decimal("-1E-999999999")) == 1_000_000_002
    for text in ("1E+3", "0.001", "-12.5", "120.500", "1" * 1500 + ".5"):
        assert plain_length(Decimal(text)) == len(format_decimal(Decimal(text)))


@pytest.mark.parametrize("spelling", ["1." + "0" * 1200, "0E-1000", "0E+999999999",
                                      "7.000000000000000000000"])
def test_values_are_trimmed_to_the_scale_so_exact_sums_never_round(spelling):
    value = parse_decimal(spelling)
    assert value == Decimal(spelling)
    assert EXACT.add(EXACT.add(Decimal("5"), value), value) == 5 + 2 * Decimal(spelling)


def test_printable_escapes_what_could_drive_a_terminal():
    assert printable("acme\x1b[2J\x9b\u202e\ud800\n ok é 😀") == \
        "acme\\x1b[2J\\x9b\\u202e\\ud800\\x0a ok é 😀"


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.decimals(allow_nan=True, allow_infinity=True)
    | st.text().map(UnrepresentableNumber) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12)


@settings(max_examples=1500, deadline=None)
@given(_JSON_VALUES, st.booleans())
def test_dumps_exact_writes_what_the_standard_encoder_writes(value, sort_keys):
    """The orjson path and the standard library's encoder agree byte for byte on
    everything: big ints, lone surrogates, control characters, NaN Decimals, floats."""
    assert dumps_exact(value, sort_keys=sort_keys) == values._dumps_exact_slowly(value,
                                                                                 sort_keys)


def test_an_event_is_written_by_orjson(monkeypatch):
    """The fast path is the one taken for what a batch element decodes to, a number no
    Decimal holds included."""
    doc = loads_exact('{"id":"é\\u2028\\u0001","data":{"v":1.50,"n":12,"ok":true,"l":[null],'
                      '"far":1E+1000000000000000000}}'.encode())
    assert type(doc["data"]["far"]) is UnrepresentableNumber
    expected = dumps_exact(doc)

    def refuse(*_args):
        raise AssertionError("the slow encoder was used")

    monkeypatch.setattr(values, "_dumps_exact_slowly", refuse)
    assert dumps_exact(doc) == expected == ('{"id":"é\u2028\\u0001","data":{"v":1.50,'
                                            '"n":12,"ok":true,"l":[null],'
                                            '"far":1E+1000000000000000000}}')


def test_subclasses_of_the_json_types_are_written_as_their_values():
    """orjson refuses them and the standard encoder writes them: never as their str()."""
    class Text(str):
        pass

    class Mapping(dict):
        pass

    assert dumps_exact({"t": Text("v"), "m": Mapping(a=[Text("w")])}) == \
        '{"t":"v","m":{"a":["w"]}}'


class Meter(enum.Enum):
    CALLS = "calls"


@dataclass
class Point:
    x: int
    y: Decimal


def _written(obj, write):
    try:
        return write(obj)
    except (TypeError, ValueError) as error:
        return type(error)


@pytest.mark.parametrize("value", [
    (1, 2), {"t": (Decimal("1.5"), "x")}, [datetime(2026, 11, 2, tzinfo=timezone.utc)],
    {"u": uuid.UUID(int=7)}, {"e": Meter.CALLS}, {"d": Point(1, Decimal("2.5"))},
])
def test_what_is_not_json_is_written_by_the_standard_encoder_or_refused_by_both(value):
    """orjson writes tuples, datetimes, UUIDs, enums and dataclasses, each its own way:
    dumps_exact must not, so its text never depends on which encoder took the value."""
    assert _written(value, dumps_exact) == _written(
        value, lambda v: values._dumps_exact_slowly(v, False))


@pytest.mark.parametrize("brk, escape", [("\x85", "\\u0085"), ("\u2028", "\\u2028"),
                                         ("\u2029", "\\u2029")])
def test_one_line_escapes_each_line_break_a_json_string_may_hold_raw(brk, escape):
    """Each break alone is enough to be escaped, and each is escaped as itself."""
    text = '{"a":"x' + brk + 'y","b":"\u00e9\\n"}'
    written = values.one_line(text)
    assert written == '{"a":"x' + escape + 'y","b":"\u00e9\\n"}'
    assert written.splitlines() == [written]
    assert json.loads(written) == json.loads(text)


def test_one_line_leaves_json_without_those_breaks_as_it_is():
    text = '{"a":"\u00e9\u2027\u202a\x84\\u0085","n":1.50}'
    assert values.one_line(text) == text
