"""Exact numbers and times: JSON without floats, decimal usage values, RFC 3339; and
text made safe for a terminal.

Usage values are `decimal.Decimal` from the byte they are parsed to the
BigQuery NUMERIC they are written as. All arithmetic goes through `EXACT`, a
context that raises instead of rounding, so an inexact result can never pass
silently (Python's default context rounds to 28 digits, fewer than NUMERIC's 38).
"""
from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded

import orjson

EXACT = Context(prec=1000, Emax=999_999, Emin=-999_999,
                traps=[Inexact, Rounded, InvalidOperation, Overflow])
# Dropping trailing zeros signals Rounded (never Inexact): allowed only where that is all it does.
_TRIM = Context(prec=1000, Emax=999_999, Emin=-999_999, traps=[Inexact, InvalidOperation, Overflow])

NUMERIC_MAX_INTEGER_DIGITS = 29
NUMERIC_SCALE = 9
BIGNUMERIC_MAX = Decimal("578960446186580977117854925043439539266."
                         "34992332820282019728792003956564819967")
# Two's complement: the least value is one unit (1E-38) further from zero than the greatest.
BIGNUMERIC_MIN = Decimal("-578960446186580977117854925043439539266."
                         "34992332820282019728792003956564819968")
BIGNUMERIC_SCALE = 38

NS = 1_000_000_000  # nanoseconds in a second: every time is int ns since the epoch
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_NS_PER_DAY = 86400 * NS
# Event times: 0001-01-01 up to the end of 9999-12-30 UTC, so that every window (a
# divisor of a day, see parse_window) starts and ends within what RFC 3339 and
# BigQuery TIMESTAMP can spell (the last day's windows would end in year 10000).
MIN_TIME_NS = (dt.date(1, 1, 1).toordinal() - _EPOCH_ORDINAL) * _NS_PER_DAY
MAX_TIME_NS = (dt.date(9999, 12, 31).toordinal() - _EPOCH_ORDINAL) * _NS_PER_DAY - 1

# The one decimal grammar, for event values and price book amounts alike: ASCII
# digits only (re.ASCII: \d would also match Arabic-Indic and other digits).
DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z", re.ASCII)
_NON_FINITE_STRING = re.compile(r"[+-]?(?:nan|snan|inf|infinity)\Z", re.IGNORECASE)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))\Z", re.ASCII)


class ValueProblem(ValueError):
    """A usage value that cannot be used; `code` is a stable error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- JSON


def loads_exact(raw: bytes | str, numbers_under: str | None = None):
    """Parses JSON keeping every number exact: ints as int, others as Decimal.

    orjson is the fast path; it turns non-integers and integers beyond 64 bits
    into floats, so any float in its result sends the text to the standard
    library parser with `parse_float=Decimal`. With `numbers_under`, a JSON
    object is only searched for floats under that key (a caller that rejects
    numbers everywhere else, like an event's attributes, saves the walk). NaN and Infinity literals (not
    JSON, but sent by some producers) parse to non-finite Decimals so the value
    check can name them rather than calling the whole line malformed. Integers
    too long for Python's int-to-text limit parse as Decimals, so they are
    judged as values too.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
        fallback = True
    else:
        fallback = _holds_inexact(obj[numbers_under] if numbers_under and type(obj) is dict
                                    and numbers_under in obj else obj)
    if fallback:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else raw
        obj = json.loads(text, parse_float=_exact_decimal, parse_constant=Decimal,
                         parse_int=_exact_int)
    return obj


def _exact_int(text: str):
    return int(text) if len(text) <= _INT_DIGITS else Decimal(text)


class UnrepresentableNumber:
    """A JSON number with an exponent beyond ±999999999999999999, which no Decimal can
    hold: kept as its text, so it is written back verbatim where an event only carries
    it, and a meter reading it finds a value out of range (orjson, the fast path's
    parser, reads it as infinity or 0.0, which the fast path leaves to the validator)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text


def _exact_decimal(text: str) -> Decimal | UnrepresentableNumber:
    try:
        return Decimal(text)
    except InvalidOperation:  # beyond libmpdec's exponent limit
        return UnrepresentableNumber(text)


_ZERO = Decimal(0)
_INT_DIGITS = 4000  # below sys.get_int_max_str_digits() (4300 by default)


# What an exact JSON value is made of: JSON's types as parsed, numbers as ints,
# Decimals or UnrepresentableNumbers (dicts and lists are walked).
_EXACT_LEAVES = frozenset({str, int, bool, type(None), Decimal, UnrepresentableNumber})


def _holds_inexact(obj) -> bool:
    """Whether `obj` holds anything but an exact JSON value: a float (orjson's reading
    of a number the standard parser must read again; a value orjson would spell
    differently), or a type orjson writes where the standard encoder writes it otherwise
    or refuses it (a tuple, a datetime, a UUID, a subclass of a JSON type)."""
    pending = [obj]
    while pending:
        node = pending.pop()
        kind = type(node)
        if kind is dict:
            pending.extend(node.values())
        elif kind is list:
            pending.extend(node)
        elif kind not in _EXACT_LEAVES:
            return True
    return False


def dumps_exact(obj, *, sort_keys: bool = False) -> str:
    """Compact JSON that writes Decimals as the numbers they were parsed from.

    The standard encoder would need floats; this keeps `1.50` and `1E+3`
    spelled as received, so a re-serialised event means exactly what it said.
    orjson writes it (about 50x faster, every event of a CloudEvents batch is
    re-serialised) unless the value holds what orjson would spell differently or
    refuses: floats, integers beyond 64 bits, lone surrogates, any type but the
    JSON ones (tuples, datetimes, subclasses); those take the standard library's
    encoder, whose text is the same wherever both can write it (tests/test_values.py
    compares them)."""
    if not _holds_inexact(obj):
        try:
            return orjson.dumps(obj, default=_number_text,
                                option=orjson.OPT_SORT_KEYS if sort_keys else 0).decode()
        except orjson.JSONEncodeError:
            pass
    return _dumps_exact_slowly(obj, sort_keys)


def _number_text(value):
    if type(value) is Decimal or type(value) is UnrepresentableNumber:
        return orjson.Fragment(str(value))
    raise TypeError(type(value).__name__)


def _dumps_exact_slowly(obj, sort_keys: bool) -> str:
    if isinstance(obj, dict):
        items = sorted(obj.items()) if sort_keys else obj.items()
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":"
                              + _dumps_exact_slowly(v, sort_keys) for k, v in items) + "}"
    if isinstance(obj, list):
        return "[" + ",".join(_dumps_exact_slowly(v, sort_keys) for v in obj) + "]"
    if isinstance(obj, (Decimal, UnrepresentableNumber)):
        return str(obj)
    return json.dumps(obj, ensure_ascii=False)


# Line breaks a JSON string may hold raw that are not LF: str.splitlines() (and
# JavaScript, for U+2028 and U+2029) ends a line at each.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(json_text: str) -> str:
    """`json_text` (JSON with no raw LF) as one JSONL line for every reader: the other
    line breaks, which only its strings can hold, escaped; the same JSON value."""
    if "\x85" in json_text or "\u2028" in json_text or "\u2029" in json_text:
        return json_text.translate(_LINE_BREAKS)
    return json_text


# ------------------------------------------------------------- decimals


def parse_decimal(value, *, precision: str = "NUMERIC", allow_negative: bool = False) -> Decimal:
    """Turns a JSON scalar (int, exact Decimal, or decimal string) into a checked Decimal.

    Raises ValueProblem with VALUE_MISSING, VALUE_NOT_SCALAR, VALUE_NOT_NUMERIC,
    VALUE_NOT_FINITE, VALUE_NEGATIVE or VALUE_OUT_OF_RANGE.
    """
    if value is None:
        raise ValueProblem("VALUE_MISSING", "value is null")
    if isinstance(value, (dict, list)):
        raise ValueProblem("VALUE_NOT_SCALAR", f"value is a JSON {_json_kind(value)}, not a number")
    if isinstance(value, bool):
        raise ValueProblem("VALUE_NOT_NUMERIC", f"value is a boolean ({str(value).lower()})")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, UnrepresentableNumber):
        raise ValueProblem("VALUE_OUT_OF_RANGE", f"value {clip(str(value))} is beyond "
                           f"{precision} range")
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        if DECIMAL_TEXT.match(value):
            try:
                number = Decimal(value)
            except InvalidOperation:  # an exponent beyond what any decimal holds
                raise ValueProblem("VALUE_OUT_OF_RANGE",
                                   f"value {clip(value)} is beyond {precision} range") from None
        elif _NON_FINITE_STRING.match(value):
            raise ValueProblem("VALUE_NOT_FINITE", f"value {value!r} is not finite")
        else:
            raise ValueProblem("VALUE_NOT_NUMERIC", f"value {clip(value)!r} is not a decimal number")
    else:
        raise ValueProblem("VALUE_NOT_NUMERIC", f"value of type {type(value).__name__} is not a number")
    if not number.is_finite():
        raise ValueProblem("VALUE_NOT_FINITE", f"value {value} is not finite")
    number = check_range(number, precision)
    if number.is_signed() and not number.is_zero() and not allow_negative:
        raise ValueProblem("VALUE_NEGATIVE", f"value {format_decimal(number)} is negative")
    return number


def check_range(number: Decimal, precision: str) -> Decimal:
    """`number` as BigQuery stores it, trailing fraction zeros beyond the scale dropped
    (1.5000000000000 has 13 fraction digits, but means 1.5); raises VALUE_OUT_OF_RANGE
    unless BigQuery can store it exactly.

    Dropping the zeros keeps every accepted value within 38 + 38 digits, so exact
    sums in `EXACT` never need more precision than it has, however a value was spelled.
    """
    if number.is_zero():
        return _ZERO  # 0E-1000 and 0E+999999999 too: a zero of any exponent adds as 0
    if precision == "NUMERIC":
        too_big = number.adjusted() >= NUMERIC_MAX_INTEGER_DIGITS
    else:
        # comparisons are exact (no context rounds them)
        too_big = number.adjusted() > 38 or not BIGNUMERIC_MIN <= number <= BIGNUMERIC_MAX
    if too_big:
        raise ValueProblem("VALUE_OUT_OF_RANGE",
                           f"value {clip(str(number))} is beyond {precision} range")
    scale = NUMERIC_SCALE if precision == "NUMERIC" else BIGNUMERIC_SCALE
    if number.as_tuple().exponent < -scale:
        if _fraction_digits(number) > scale:
            raise ValueProblem("VALUE_OUT_OF_RANGE",
                               f"value {clip(str(number))} has more than {scale} "
                               f"fraction digits ({precision})")
        number = number.quantize(Decimal(1).scaleb(-scale), context=_TRIM)
    return number


def _fraction_digits(number: Decimal) -> int:
    """Significant fraction digits, ignoring trailing zeros (1.500 has 1)."""
    _, digits, exponent = number.as_tuple()
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + trailing_zeros))


def format_decimal(number: Decimal) -> str:
    """Plain notation without exponent or trailing fraction zeros: 1E+3 -> '1000'.

    Callers bound the length first (`plain_length`) where a value may be huge."""
    if number.is_zero():
        return "0"
    return format(_normalized(number), "f")


def plain_length(number: Decimal) -> int:
    """len(format_decimal(number)) of a finite Decimal, without writing it out
    (1E+999999999 would take a gigabyte)."""
    if number.is_zero():
        return 1
    sign, digits, exponent = _normalized(number).as_tuple()
    if exponent >= 0:
        length = len(digits) + exponent
    else:
        length = len(digits) + 1 if len(digits) > -exponent else 2 - exponent
    return length + sign


def _normalized(number: Decimal) -> Decimal:
    """A non-zero number with its trailing zeros dropped, exactly, whatever its digits or exponent.

    Beyond EXACT, the digits are trimmed by hand: no context can normalize
    1E-1000000000000000005 (below the least exponent a context admits, it would
    round to 0), though JSON may spell it and a Decimal holds it."""
    try:
        return number.normalize(EXACT)
    except ArithmeticError:  # more digits, or an exponent further out, than EXACT holds
        sign, digits, exponent = number.as_tuple()
        kept = len(digits)
        while digits[kept - 1] == 0:  # a non-zero number has a non-zero digit
            kept -= 1
        return Decimal((sign, digits[:kept], exponent + len(digits) - kept))


def _json_kind(value) -> str:
    return "object" if isinstance(value, dict) else "array"


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters with an ellipsis, for a message that quotes input."""
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------- times


def parse_rfc3339(text) -> int:
    """RFC 3339 date-time with offset -> nanoseconds since the epoch, UTC.

    Exact to the nanosecond (digits beyond the ninth are truncated), so two
    spellings of the same instant in different offsets compare equal. A leap
    second (`23:59:60` UTC, in any offset) is read as the last nanosecond of its
    minute, `23:59:59.999999999`: POSIX time, Beam and BigQuery have no 61st
    second, and so the event stays in the minute, hour and day it was stamped in.
    Raises ValueError with a readable reason.
    """
    if not isinstance(text, str):
        raise ValueError(f"time must be a string, got {type(text).__name__}")
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(f"time {clip(text)!r} is not RFC 3339 with an offset "
                         "(e.g. 2026-01-01T00:00:00Z)")
    days = _epoch_days(m.group(1, 2, 3), text)
    hour, minute, second = int(m.group(4)), int(m.group(5)), int(m.group(6))
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError(f"time {clip(text)!r}: clock time out of range")
    offset = 0
    if m.group(8):
        off_h, off_m = int(m.group(9)), int(m.group(10))
        if off_h > 23 or off_m > 59:
            raise ValueError(f"time {clip(text)!r}: offset out of range")
        offset = (off_h * 3600 + off_m * 60) * (1 if m.group(8) == "+" else -1)
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
    fraction = int((m.group(7) or "0")[:9].ljust(9, "0"))
    if second == 60:
        if seconds % 86400:  # 23:59:60 UTC is 00:00:00 of the next day, less the leap
            raise ValueError(f"time {clip(text)!r}: a leap second is 23:59:60 UTC only")
        seconds, fraction = seconds - 1, NS - 1
    nanos = seconds * NS + fraction
    if not MIN_TIME_NS <= nanos <= MAX_TIME_NS:
        raise ValueError(f"time {clip(text)!r} is outside {format_time(MIN_TIME_NS)} .. "
                         f"{format_time(MAX_TIME_NS)}")
    return nanos


_EPOCH_DAYS: dict[tuple, int] = {}


def _epoch_days(ymd: tuple[str, str, str], text: str) -> int:
    """Days since 1970-01-01 of a validated calendar date; memoised (events share dates)."""
    days = _EPOCH_DAYS.get(ymd)
    if days is None:
        try:
            days = dt.date(*map(int, ymd)).toordinal() - _EPOCH_ORDINAL
        except ValueError as e:
            raise ValueError(f"time {text!r}: {e}") from None
        if len(_EPOCH_DAYS) < 100_000:
            _EPOCH_DAYS[ymd] = days
    return days


def format_time(nanos: int) -> str:
    """Nanoseconds since the epoch -> RFC 3339 UTC with Z, fraction only when non-zero;
    years zero-padded to four digits (0001-01-01T00:00:00Z)."""
    seconds, frac = divmod(nanos, NS)
    t = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)
    stamp = (f"{t.year:04d}-{t.month:02d}-{t.day:02d}"
             f"T{t.hour:02d}:{t.minute:02d}:{t.second:02d}")
    if frac:
        stamp += "." + f"{frac:09d}".rstrip("0")
    return stamp + "Z"


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)\Z", re.ASCII)
_DURATION_NS = {"ms": 1_000_000, "s": NS, "m": 60 * NS,
                "h": 3600 * NS, "d": 86400 * NS}


def parse_duration(text: str) -> int:
    """'1h', '15m', '1d', '300s' -> nanoseconds."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"duration {text!r} must be a positive number with ms, s, m, h or d "
                         "(e.g. 1h, 15m)")
    return int(m.group(1)) * _DURATION_NS[m.group(2)]


def parse_window(text: str) -> int:
    """A window size -> nanoseconds: whole seconds that divide a day (1s .. 1d: 1m, 15m,
    1h, 6h, 1d ...). Windows are aligned to UTC days so every event time in range has a
    window that starts and ends within 0001-01-01 .. 9999-12-31 (an odd size, aligned to
    the epoch, would reach before year 1), and Beam's FixedWindows takes whole seconds."""
    window_ns = parse_duration(text)
    if window_ns % NS or _NS_PER_DAY % window_ns:
        raise ValueError(f"window {text!r} must be a whole number of seconds that divides "
                         "a day (e.g. 1m, 5m, 15m, 1h, 6h, 1d)")
    return window_ns


# ----------------------------------------------------------------- text

# Characters no identifier may hold and no terminal may be sent raw: C0 controls,
# DEL, C1 controls (ESC and CSI start escape sequences), the bidirectional
# formatting characters (they make text display as other text) and lone UTF-16
# surrogates (not Unicode text at all).
UNSAFE_CHARACTERS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` with every unsafe character spelled as an escape (ESC -> \\x1b,
    U+202E -> \\u202e), for a terminal: nothing an event says can move the cursor,
    recolour, retitle or reorder what an operator reads. Newlines are escaped too,
    so apply it to one line at a time."""
    return UNSAFE_CHARACTERS.sub(_escape, text)


def _escape(match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
