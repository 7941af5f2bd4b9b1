"""Exact numbers and times: JSON without floats, decimal usage values, RFC 3339.

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

NUMERIC_MAX_INTEGER_DIGITS = 29
NUMERIC_SCALE = 9
BIGNUMERIC_MAX = Decimal("578960446186580977117854925043439539266."
                         "34992332820282019728792003956564819967")
BIGNUMERIC_SCALE = 38

_NS_PER_SECOND = 1_000_000_000
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
MIN_TIME_NS = (dt.date(1, 1, 1).toordinal() - _EPOCH_ORDINAL) * 86400 * _NS_PER_SECOND
MAX_TIME_NS = (dt.date(9999, 12, 31).toordinal() - _EPOCH_ORDINAL + 1) * 86400 * _NS_PER_SECOND - 1

_DECIMAL_STRING = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z", re.ASCII)
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
    check can name them rather than calling the whole line malformed.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
        fallback = True
    else:
        fallback = _holds_floats(obj[numbers_under] if numbers_under and type(obj) is dict
                                   and numbers_under in obj else obj)
    if fallback:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray, memoryview)) else raw
        obj = json.loads(text, parse_float=Decimal, parse_constant=Decimal)
    return obj


def _holds_floats(obj) -> bool:
    pending = [obj]
    while pending:
        node = pending.pop()
        kind = type(node)
        if kind is float:
            return True
        if kind is dict:
            pending.extend(node.values())
        elif kind is list:
            pending.extend(node)
    return False


def dumps_exact(obj, *, sort_keys: bool = False) -> str:
    """Compact JSON that writes Decimals as the numbers they were parsed from.

    The standard encoder would need floats; this keeps `1.50` and `1E+3`
    spelled as received, so a re-serialised event means exactly what it said.
    """
    if isinstance(obj, dict):
        items = sorted(obj.items()) if sort_keys else obj.items()
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + dumps_exact(v, sort_keys=sort_keys)
                              for k, v in items) + "}"
    if isinstance(obj, list):
        return "[" + ",".join(dumps_exact(v, sort_keys=sort_keys) for v in obj) + "]"
    if isinstance(obj, Decimal):
        return str(obj)
    return json.dumps(obj, ensure_ascii=False)


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
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        if _DECIMAL_STRING.match(value):
            number = Decimal(value)
        elif _NON_FINITE_STRING.match(value):
            raise ValueProblem("VALUE_NOT_FINITE", f"value {value!r} is not finite")
        else:
            raise ValueProblem("VALUE_NOT_NUMERIC", f"value {_clip(value)!r} is not a decimal number")
    else:
        raise ValueProblem("VALUE_NOT_NUMERIC", f"value of type {type(value).__name__} is not a number")
    if not number.is_finite():
        raise ValueProblem("VALUE_NOT_FINITE", f"value {value} is not finite")
    check_range(number, precision)
    if number.is_signed() and not number.is_zero() and not allow_negative:
        raise ValueProblem("VALUE_NEGATIVE", f"value {format_decimal(number)} is negative")
    return number


def check_range(number: Decimal, precision: str) -> None:
    """Raises VALUE_OUT_OF_RANGE unless BigQuery can store `number` exactly."""
    if number.is_zero():
        return
    scale = NUMERIC_SCALE if precision == "NUMERIC" else BIGNUMERIC_SCALE
    if precision == "NUMERIC":
        too_big = number.adjusted() >= NUMERIC_MAX_INTEGER_DIGITS
    else:
        # copy_abs, not abs(): abs() rounds to the context's 28 digits
        too_big = number.adjusted() > 38 or number.copy_abs() > BIGNUMERIC_MAX
    if too_big:
        raise ValueProblem("VALUE_OUT_OF_RANGE",
                           f"value {_clip(str(number))} is beyond {precision} range")
    if number.as_tuple().exponent < -scale and _fraction_digits(number) > scale:
        raise ValueProblem("VALUE_OUT_OF_RANGE",
                           f"value {_clip(str(number))} has more than {scale} "
                           f"fraction digits ({precision})")


def _fraction_digits(number: Decimal) -> int:
    """Significant fraction digits, ignoring trailing zeros (1.500 has 1)."""
    _, digits, exponent = number.as_tuple()
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + trailing_zeros))


def format_decimal(number: Decimal) -> str:
    """Plain notation without exponent or trailing fraction zeros: 1E+3 -> '1000'."""
    if number.is_zero():
        return "0"
    text = format(number.normalize(EXACT), "f")
    return text


def _json_kind(value) -> str:
    return "object" if isinstance(value, dict) else "array"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------- times


def parse_rfc3339(text) -> int:
    """RFC 3339 date-time with offset -> nanoseconds since the epoch, UTC.

    Exact to the nanosecond (digits beyond the ninth are truncated), so two
    spellings of the same instant in different offsets compare equal.
    Raises ValueError with a readable reason.
    """
    if not isinstance(text, str):
        raise ValueError(f"time must be a string, got {type(text).__name__}")
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(f"time {_clip(text)!r} is not RFC 3339 with an offset "
                         "(e.g. 2026-01-01T00:00:00Z)")
    days = _epoch_days(m.group(1, 2, 3), text)
    hour, minute, second = int(m.group(4)), int(m.group(5)), int(m.group(6))
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"time {text!r}: clock time out of range")
    offset = 0
    if m.group(8):
        off_h, off_m = int(m.group(9)), int(m.group(10))
        if off_h > 23 or off_m > 59:
            raise ValueError(f"time {text!r}: offset out of range")
        offset = (off_h * 3600 + off_m * 60) * (1 if m.group(8) == "+" else -1)
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
    nanos = seconds * _NS_PER_SECOND + int((m.group(7) or "0")[:9].ljust(9, "0"))
    if not MIN_TIME_NS <= nanos <= MAX_TIME_NS:
        raise ValueError(f"time {text!r} is outside 0001-01-01..9999-12-31 UTC")
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
    """Nanoseconds since the epoch -> RFC 3339 UTC with Z, fraction only when non-zero."""
    seconds, frac = divmod(nanos, _NS_PER_SECOND)
    stamp = (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        stamp += "." + f"{frac:09d}".rstrip("0")
    return stamp + "Z"


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)\Z", re.ASCII)
_DURATION_NS = {"ms": 1_000_000, "s": _NS_PER_SECOND, "m": 60 * _NS_PER_SECOND,
                "h": 3600 * _NS_PER_SECOND, "d": 86400 * _NS_PER_SECOND}


def parse_duration(text: str) -> int:
    """'1h', '15m', '1d', '300s' -> nanoseconds."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"duration {text!r} must be a positive number with ms, s, m, h or d "
                         "(e.g. 1h, 15m)")
    return int(m.group(1)) * _DURATION_NS[m.group(2)]
