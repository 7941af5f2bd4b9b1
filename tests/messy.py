"""A seeded generator of messy usage files with their ground truth.

Valid events of every example type, their values spelled as JSON numbers,
strings, exponents and with trailing zeros, times in many offsets and
fraction lengths; exact and re-spelled duplicates, conflicting duplicates,
CloudEvents batch lines, many kinds of invalid input (some later re-sent
corrected under the same identity), all shuffled. The ground truth is kept
from the generated values, never from parsing the text.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from decimal import Decimal

from schemas.values import format_time, parse_rfc3339  # only to spell times, not to judge

START_NS = parse_rfc3339("2026-11-01T00:00:00Z")
SPAN_NS = 3 * 86400 * 10 ** 9
OFFSETS = [0, 60, -300, 330, 345, -480, 840, -720]  # minutes


@dataclass
class Record:
    """One event as generated: `truth` is None for an invalid one."""

    doc: object            # what gets serialised
    text: str | None       # the exact JSON text (for hand-made malformed payloads)
    code: str | None       # expected error code when invalid
    truth: dict | None     # {source, id, subject, type, time_ns, data} when valid
    signature: tuple = ()  # what the event would bill


@dataclass
class Messy:
    lines: list[bytes] = field(default_factory=list)
    accepted: list[dict] = field(default_factory=list)
    dead: list[tuple[str, str]] = field(default_factory=list)  # (position, code)
    duplicates: int = 0
    conflicts: int = 0
    records: int = 0


def spell_time(rng: random.Random, time_ns: int) -> str:
    """The same instant in a random offset and fraction length."""
    offset = rng.choice(OFFSETS)
    local = time_ns + offset * 60 * 10 ** 9
    frac = f"{local % 10 ** 9:09d}"
    text = format_time(local - local % 10 ** 9)[:-1]
    digits = max(rng.choice([0, 3, 6, 9]), len(frac.rstrip("0")))
    if digits:
        text += "." + frac[:digits]
    if offset == 0 and rng.random() < 0.7:
        return text + rng.choice(["Z", "z"])
    sign = "+" if offset >= 0 else "-"
    return text + f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"


def spell_value(rng: random.Random, value: Decimal):
    """A Decimal as a JSON number or a string, plain, padded or in exponent form."""
    plain = format(value, "f")
    choices = [Decimal(plain), plain]
    if value == value.to_integral_value():
        integer = str(int(value))
        choices += [int(value), f"{integer}.000"]
        digits = integer.rstrip("0")
        zeros = len(integer) - len(digits)
        if zeros and digits:
            choices.append(f"{digits}E{zeros}")
            choices.append(Decimal(f"{digits}E{zeros}"))
    elif "." in plain:
        choices.append(plain + "00")
    return rng.choice(choices)


def _valid(rng: random.Random, n: int, subjects: list[str]) -> dict:
    kind = rng.choice(["api", "api", "llm", "llm", "user", "conn", "storage", "admin"])
    time_ns = START_NS + rng.randrange(SPAN_NS)
    source = rng.choice(["//api.example.com/eu", "//api.example.com/us", "//llm.example.com"])
    if kind == "api":
        big = rng.random() < 0.05
        data = {"method": rng.choice(["GET", "POST", "DELETE"]),
                "bytes_out": Decimal(rng.randrange(10 ** 27, 10 ** 28) if big
                                     else rng.randrange(0, 5_000_000))}
        etype = "api.request"
    elif kind == "llm":
        data = {"model": rng.choice(["large-2", "small-1"]),
                "input_tokens": Decimal(rng.randrange(1, 200_000)),
                "output_tokens": Decimal(rng.randrange(0, 8_000)),
                "cost_usd": Decimal(rng.randrange(0, 10 ** 10)).scaleb(-9)}
        etype = "llm.completion"
    elif kind == "user":
        uid = rng.randrange(40)
        data = {"user_id": f"u-{uid}"}
        etype = "user.active"
    elif kind == "conn":
        data = {"connections": Decimal(rng.randrange(0, 10_000))}
        etype = "connection.gauge"
    elif kind == "storage":
        data = {"gb": Decimal(rng.randrange(0, 10 ** 12)).scaleb(-rng.choice([0, 3, 9]))}
        etype = "storage.snapshot"
    else:
        data = {"user": "ops", "ip": "10.0.0.1"}
        etype = "admin.login"
    return {"source": source, "id": f"evt-{n:06d}", "subject": rng.choice(subjects),
            "type": etype, "time_ns": time_ns, "data": data}


def _doc(rng: random.Random, truth: dict) -> dict:
    data = {k: spell_value(rng, v) if isinstance(v, Decimal) else v
            for k, v in truth["data"].items()}
    return {"specversion": "1.0", "id": truth["id"], "source": truth["source"],
            "type": truth["type"], "subject": truth["subject"],
            "time": spell_time(rng, truth["time_ns"]), "data": data}


def _signature(truth: dict) -> tuple:
    return (truth["subject"], truth["type"], truth["time_ns"],
            tuple(sorted((k, str(v)) for k, v in truth["data"].items())))


_METERED_VALUE = {"api.request": "bytes_out", "llm.completion": "cost_usd",
                  "user.active": "user_id", "connection.gauge": "connections",
                  "storage.snapshot": "gb"}


def _invalid(rng: random.Random, truth: dict) -> Record:
    """A broken version of a valid event (its identity may be re-sent corrected later)."""
    doc = _doc(rng, truth)
    field_name = _METERED_VALUE.get(truth["type"])
    breakers = [
        ("MISSING_ATTRIBUTE", lambda d: d.pop("subject")),
        ("MISSING_ATTRIBUTE", lambda d: d.update(time=None)),
        ("EMPTY_ATTRIBUTE", lambda d: d.update(subject="")),
        ("INVALID_ATTRIBUTE", lambda d: d.update(subject=12345)),
        ("INVALID_ATTRIBUTE", lambda d: d.update(subject="s" * 300)),
        ("UNSUPPORTED_SPECVERSION", lambda d: d.update(specversion="0.3")),
        ("BAD_TIME", lambda d: d.update(time="2026-11-02 09:00:00")),
        ("BAD_TIME", lambda d: d.update(time="2026-02-30T10:00:00Z")),
        ("BAD_TIME", lambda d: d.update(time="1730538000")),
        ("FUTURE_TIME", lambda d: d.update(time="2099-01-01T00:00:00Z")),
    ]
    if field_name:
        numeric = truth["type"] != "user.active"
        breakers += [
            ("VALUE_MISSING", lambda d: d["data"].pop(field_name)),
            ("VALUE_MISSING", lambda d: d["data"].update({field_name: None})),
            ("VALUE_NOT_SCALAR", lambda d: d["data"].update({field_name: {"v": 1}})),
        ]
        if numeric:
            breakers += [
                ("VALUE_NOT_NUMERIC", lambda d: d["data"].update({field_name: "12 kB"})),
                ("VALUE_NOT_NUMERIC", lambda d: d["data"].update({field_name: True})),
                ("VALUE_NOT_FINITE", lambda d: d["data"].update({field_name: "NaN"})),
                ("VALUE_NOT_FINITE", lambda d: d["data"].update({field_name: "-Infinity"})),
                ("VALUE_NEGATIVE", lambda d: d["data"].update({field_name: "-1"})),
                ("VALUE_OUT_OF_RANGE", lambda d: d["data"].update({field_name: "1E+30"})),
                ("VALUE_OUT_OF_RANGE",
                 lambda d: d["data"].update({field_name: "0.0000000001"})),
            ]
    code, breaker = rng.choice(breakers)
    breaker(doc)
    return Record(doc, None, code, None)


_GARBAGE = [
    ("MALFORMED_JSON", '{"specversion":"1.0","id":"x1","source":'),
    ("MALFORMED_JSON", "not json at all"),
    ("MALFORMED_JSON", '{"id": "dup-key", "id": }'),
    ("MALFORMED_JSON", ""),
    ("NOT_AN_OBJECT", "42"),
    ("NOT_AN_OBJECT", '"a string"'),
    ("NOT_AN_OBJECT", "null"),
    ("EMPTY_BATCH", "[]"),
]


def generate(seed: int, events: int, subjects: int = 6) -> Messy:
    rng = random.Random(seed)
    names = [f"cust-{i:03d}" for i in range(subjects)]
    records: list[Record] = []
    for n in range(events):
        truth = _valid(rng, n, names)
        roll = rng.random()
        if roll < 0.08:
            records.append(_invalid(rng, truth))
            if rng.random() < 0.5:  # re-sent corrected under the same identity
                records.append(Record(_doc(rng, truth), None, None, truth, _signature(truth)))
            continue
        records.append(Record(_doc(rng, truth), None, None, truth, _signature(truth)))
        if roll < 0.25:  # exact or re-spelled duplicates
            for _ in range(rng.randint(1, 3)):
                records.append(Record(_doc(rng, truth), None, None, truth, _signature(truth)))
        elif roll < 0.30:  # a conflicting copy: same identity, other value or subject
            other = {**truth, "subject": rng.choice(names),
                     "time_ns": truth["time_ns"] + rng.choice([0, 10 ** 9])}
            records.append(Record(_doc(rng, other), None, None, other, _signature(other)))
    for code, text in _GARBAGE * max(1, events // 400):
        records.append(Record(None, text, code, None))
    rng.shuffle(records)
    return _layout(rng, records)


def dump_json(value) -> str:
    """JSON text where Decimals are written as numbers, exactly as generated."""
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k) + ":" + dump_json(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump_json(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value)


def _layout(rng: random.Random, records: list[Record]) -> Messy:
    """Puts records on lines (some as CloudEvents batches) and derives the ground truth."""
    messy = Messy()
    seen: dict[tuple, tuple] = {}
    i = 0
    while i < len(records):
        line_no = len(messy.lines) + 1
        take = rng.randint(2, 5)
        group = records[i:i + take]
        if rng.random() < 0.1 and all(r.text is None for r in group):
            messy.lines.append(("[" + ",".join(dump_json(r.doc) for r in group) + "]").encode())
            positions = [f"{line_no}#{k}" for k in range(len(group))]
        else:
            group = records[i:i + 1]
            r = group[0]
            messy.lines.append((r.text if r.text is not None else dump_json(r.doc)).encode())
            positions = [f"{line_no}"]
        i += len(group)
        for record, position in zip(group, positions):
            messy.records += 1
            if record.code:
                messy.dead.append((position, record.code))
                continue
            identity = (record.truth["source"], record.truth["id"])
            if identity in seen:
                messy.duplicates += 1
                messy.conflicts += record.signature != seen[identity]
                continue
            seen[identity] = record.signature
            messy.accepted.append(record.truth)
    return messy
