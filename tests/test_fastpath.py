"""FastAccept accepts only what the full validator accepts, with the same readings.

It may decline any event (the full validator then decides), but it must never
accept an event the validator rejects, nor read it differently. Checked on
every error-code case, on the messy generator's file and on random events made
of edge-case parts, with numbers spelled verbatim in the JSON text.
"""
import json
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import Limits, UsageEvent, parse_payload
from schemas.fastpath import FastAccept
from schemas.values import format_decimal, parse_rfc3339
from tests import messy
from tests.test_events import CASES, LIMITS, NOW


def agree(payload: bytes, catalog, limits: Limits = LIMITS) -> bool:
    """Asserts the fast path agrees with parse_payload; returns whether it accepted."""
    fast = FastAccept(catalog, limits).accept(payload, limits.now_ns)
    if fast is None:
        return False
    results = parse_payload(payload, "f:1", ("f", 1), catalog, limits)
    assert len(results) == 1 and isinstance(results[0], UsageEvent), (payload, results)
    e = results[0]
    readings = tuple((r.meter, r.dimensions,
                      format_decimal(r.value) if isinstance(r.value, Decimal) else r.value)
                     for r in e.readings)
    assert fast == (e.source, e.id, e.type, e.subject, e.time_ns, readings), payload
    return True


def test_declines_every_rejected_case(catalog):
    for payload, code in CASES:
        assert not agree(payload, catalog), code


def test_agrees_on_the_messy_file(example_catalog):
    generated = messy.generate(seed=11, events=3000)
    limits = Limits(now_ns=messy.START_NS + 10 * 86400 * 10 ** 9)
    accepted = sum(agree(payload, example_catalog, limits) for payload in generated.lines)
    # most valid events take the fast path; the rest of the lines are declined
    assert accepted > 0.6 * len(generated.accepted)


class Raw(str):
    """JSON text written verbatim (a number spelled as the producer spelled it)."""


def dump(value) -> str:
    if isinstance(value, Raw):
        return value
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(dump, value)) + "]"
    return json.dumps(value, ensure_ascii=False)


ABSENT = object()
TEXT = st.sampled_from(["a", "acme", "x" * 256, "x" * 257, "", "é", "\u0660", " "])
ATTRIBUTE = st.one_of(TEXT, st.sampled_from([ABSENT, None, 5, True, Raw("1.5"), ["a"], {}]))
TIME = st.one_of(
    st.sampled_from([
        "2026-11-02T09:00:00Z", "2026-11-02t09:00:00z", "2026-11-02T09:00:00.5Z",
        "2026-11-02T09:00:00.123456789Z", "2026-11-02T09:00:00.1234567891Z",
        "2026-11-02T10:30:00+01:30", "2026-11-02T09:00:00-00:00", "2026-11-02T09:00:60Z",
        "2026-11-02T24:00:00Z", "2026-02-30T09:00:00Z", "2026-11-02T09:00:00",
        "2026-11-02 09:00:00Z", "2026-11-02T09:00:00+24:00", "2026-11-02T09:00:00.Z",
        "0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59.999999999-00:01",
        "2026-11-21T00:05:00Z", "2026-11-21T00:05:00.000000001Z", "2026-11-02T09:00:0\u0661Z",
        "\u0662026-11-02T09:00:00Z", ""]),
    st.sampled_from([ABSENT, None, 1700000000, Raw("1.5")]))
NUMBER = st.sampled_from([
    0, 7, -7, 10 ** 29 - 1, 10 ** 29, -(10 ** 29) + 1, 10 ** 40, True, None, ABSENT, [1], {"v": 1},
    "2.5", "02.50", "0.000000001", "0.0000000001", "1.0000000000", "1e3", "1E+2", "-1.5",
    "+1", ".5", "5.", "NaN", "inf", "", " 1", "1 ", "\u0661", "99999999999999999999999999999.5",
    Raw("2.50"), Raw("1e3"), Raw("-0"), Raw("0.1"), Raw("1E400"), Raw("18446744073709551616")])
DIMENSION = st.sampled_from(["eu", "", 7, "7", True, False, 1, 0, None, ABSENT, Raw("1.5"),
                             [1], {"a": 1}, "\u00e9"])


@st.composite
def documents(draw):
    doc = {"specversion": draw(st.sampled_from(["1.0", "1.0", "1.0", "0.3", 1, ABSENT]))}
    for name in ("id", "source", "subject"):
        doc[name] = draw(ATTRIBUTE)
    doc["type"] = draw(st.sampled_from(["call", "ledger", "other", 5, ABSENT]))
    doc["time"] = draw(TIME)
    data = {"region": draw(DIMENSION), "amount": draw(NUMBER), "user": draw(DIMENSION),
            "delta": draw(NUMBER)}
    data = {k: v for k, v in data.items() if v is not ABSENT}
    doc["data"] = draw(st.sampled_from([data, data, data, None, ABSENT, [data], "x"]))
    return {k: v for k, v in doc.items() if v is not ABSENT}


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(documents(), min_size=20, max_size=20))
def test_agrees_on_random_events(catalog, docs):
    limits = Limits(now_ns=parse_rfc3339("2026-11-21T00:00:00Z"))
    for doc in docs:
        agree(dump(doc).encode(), catalog, limits)


def test_takes_the_common_shapes(catalog):
    limits = Limits(now_ns=NOW)
    common = [
        {"region": "eu", "amount": 3, "user": "u1"},
        {"region": "eu", "amount": "2.50", "user": 7},
        {"region": None, "amount": "0.000000001", "user": "u"},
        {"amount": 2 ** 64 - 1, "user": "u", "region": True},  # orjson reads up to 64 bits
    ]
    for data in common:
        doc = {"specversion": "1.0", "id": "e", "source": "//s", "type": "call",
               "subject": "acme", "time": "2026-11-02T09:00:00.25+05:30", "data": data}
        assert agree(dump(doc).encode(), catalog, limits), data
