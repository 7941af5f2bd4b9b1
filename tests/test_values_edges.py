"""Edges of values and times: the last value or instant accepted and the first rejected,
and the messages an operator reads in dead_letter (each pins a mutant that survived the
other tests, docs/testing.md)."""
from decimal import Decimal

import pytest

from schemas import values
from schemas.values import (BIGNUMERIC_MAX, MAX_TIME_NS, MIN_TIME_NS, NS, ValueProblem,
                            dumps_exact, loads_exact, parse_decimal, parse_duration, parse_rfc3339,
                            parse_window, plain_length)
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
    # BIGNUMERIC is 256-bit two's complement scaled by 10**-38: -2**255 is its least
    # value, one unit further from zero than the greatest
    least = Decimal(f"{-2 ** 255}E-38")
    assert str(least) == "-" + just_over
    assert parse_decimal(str(least), precision="BIGNUMERIC", allow_negative=True) == least
    assert code_of(str(least)[:-1] + "9", precision="BIGNUMERIC",
                   allow_negative=True) == "VALUE_OUT_OF_RANGE"
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


@pytest.mark.parametrize("spelling,plain", [
    ("0", "0"), ("-0E-5", "0"), ("7", "7"), ("70E-1", "7"), ("-12", "-12"), ("0.5", "0.5"),
    ("5E-1", "0.5"), ("-0.250", "-0.25"), ("10.5", "10.5"), ("1E+3", "1000"), ("0.001", "0.001"),
])
def test_plain_length_is_the_length_of_the_plain_spelling(spelling, plain):
    """Zero, integers, pure fractions whose digits fill the fraction, mixed and signed."""
    assert plain_length(Decimal(spelling)) == len(plain)


def test_plain_length_beyond_every_context():
    """JSON may spell exponents below the least any decimal context admits (a Decimal
    still holds them): measured exactly, never rounded to 0 or raising."""
    # "0." then 1999999999999999996 zeros then "1"
    assert plain_length(Decimal("1E-1999999999999999997")) == 1999999999999999999
    # "-", "12" and 999999999999999998 zeros
    assert plain_length(Decimal("-1200E+999999999999999996")) == 10 ** 18 + 1
    # 1500 fives, then ".5": 1502 characters with the point
    assert plain_length(Decimal("5" * 1501 + "000E-4")) == 1502


def test_the_date_memo_is_only_a_memo(monkeypatch):
    """A date not yet seen (a cold worker) and one seen before give the same instant."""
    monkeypatch.setattr(values, "_EPOCH_DAYS", {})
    for _ in ("cold", "warm"):
        assert parse_rfc3339("1970-01-02T00:00:00Z") == 86400 * NS
        assert parse_rfc3339("1969-12-31T00:00:00Z") == -86400 * NS
        # 30 years of 365 days, 7 leap days (1972 .. 1996), then January and February 2000
        assert parse_rfc3339("2000-03-01T00:00:00Z") == (30 * 365 + 7 + 31 + 29) * 86400 * NS
        assert parse_rfc3339("0001-01-01T00:00:00Z") == -62135596800 * NS


def test_integers_past_the_int_text_limit_parse_as_decimals():
    """Python refuses int <-> text beyond 4300 digits: from 4001 digits on an integer is
    a Decimal (judged as an out-of-range value later), up to 4000 an int."""
    for digits, kind in ((4000, int), (4001, Decimal), (5000, Decimal)):
        doc = loads_exact(b'{"v": ' + b"7" * digits + b', "f": 0.5}')
        assert type(doc["v"]) is kind and Decimal(doc["v"]) == Decimal("7" * digits)
    assert code_of(loads_exact(b"9" * 5000)) == "VALUE_OUT_OF_RANGE"


@pytest.mark.parametrize("raw", ['{"v": 1.5}'.encode("utf-16-le"), '{"v": 1.5}'.encode("utf-32"),
                                 b'{"v": 1.5, "id": "\xed\xa0\x80"}'])
def test_json_that_is_not_utf_8_is_refused(raw):
    """RFC 8259 JSON is UTF-8: not UTF-16 or 32, nor a surrogate encoded as if UTF-8
    (which the standard parser would take from bytes)."""
    with pytest.raises(ValueError):
        loads_exact(raw)


@pytest.mark.parametrize("precision", ["NUMERIC", "BIGNUMERIC"])
def test_exponents_no_decimal_holds_are_out_of_range(precision):
    huge = "1E+9999999999999999999"
    number = loads_exact(huge)  # a JSON number beyond every Decimal: kept as its text
    for value in (number, huge):
        with pytest.raises(ValueProblem) as e:
            parse_decimal(value, precision=precision)
        assert (e.value.code, str(e.value)) == ("VALUE_OUT_OF_RANGE",
                                                f"value {huge} is beyond {precision} range")
    long = "1" * 100 + "E-9999999999999999999"
    for value in (loads_exact(long), long):
        with pytest.raises(ValueProblem) as e:
            parse_decimal(value, precision=precision)
        assert str(e.value) == f"value {long[:80]}... is beyond {precision} range"


def test_values_within_the_scale_keep_their_spelling_and_longer_ones_trim_exactly():
    """Only zeros beyond the scale are dropped, and without rounding (Python's default
    context would round the 38 digits to 28)."""
    for spelling in ("2.50", "1E+3", "-0.000000010"):
        assert parse_decimal(spelling, allow_negative=True).as_tuple() == \
            Decimal(spelling).as_tuple()
    nines = "9" * 29 + "." + "9" * 9
    assert parse_decimal(nines + "0").as_tuple() == Decimal(nines).as_tuple()
    ones = "0." + "1" * 38
    assert parse_decimal(ones + "00", precision="BIGNUMERIC").as_tuple() == \
        Decimal(ones).as_tuple()
    integer = "1" * 38
    assert parse_decimal(integer + "." + "0" * 40, precision="BIGNUMERIC") == int(integer)


def test_more_messages():
    with pytest.raises(ValueError, match=r"^time '2016-12-31T12:59:60Z': a leap second is "
                                         r"23:59:60 UTC only$"):
        parse_rfc3339("2016-12-31T12:59:60Z")
    with pytest.raises(ValueError, match=r"^window '7m' must be a whole number of seconds that "
                                         r"divides a day \(e\.g\. 1m, 5m, 15m, 1h, 6h, 1d\)$"):
        parse_window("7m")
