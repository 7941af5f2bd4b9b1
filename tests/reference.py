"""An independent reference for usage: plain Python for readings, DuckDB for grouping.

It shares no code with tallyflow's parsing or aggregation: values arrive as
the Decimals the test generated (not parsed from the payload), are scaled to
integer nano-units (HUGEINT in DuckDB), and grouped with SQL. If tallyflow and
this disagree on a row, one of them is wrong.

The fingerprint is computed here from its definition (README "Meters":
the sum modulo 2^128 of a BLAKE2b-128 hash of each `(source, id)`), with
the identity encoded as `schemas/aggregation.py` documents it: the UTF-8 of
`<len(source)>:<source>NUL<id>`, the digest read big-endian.
"""
from __future__ import annotations

import json
from collections import defaultdict
from decimal import Context, Decimal, Inexact
from hashlib import blake2b

import duckdb

WIDE = Context(prec=100, traps=[Inexact])  # the default context would round 38 digits


def identity_hash(source: str, event_id: str) -> int:
    key = f"{len(source)}:{source}\x00{event_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(key, digest_size=16).digest(), "big")


def fingerprint(identities) -> str:
    """32 hex digits: the sum mod 2^128 of the identity hashes of (source, id) pairs."""
    return f"{sum(identity_hash(s, i) for s, i in identities) % 2 ** 128:032x}"


def _simple_path(path: str) -> str:
    assert path.startswith("$.") and "." not in path[2:], path
    return path[2:]


def readings(accepted: list[dict], meters: list[dict]) -> list[tuple]:
    """accepted: {source, id, subject, type, time_ns, data} with the generated values.

    -> (subject, meter, aggregation, dimensions json, time_ns, id, source, number, text)
    """
    rows = []
    for ev in accepted:
        for meter in meters:
            if meter["event_type"] != ev["type"]:
                continue
            dims = {name: ev["data"].get(_simple_path(path))
                    for name, path in sorted((meter.get("group_by") or {}).items())}
            dims_json = json.dumps({k: None if v is None else str(v) for k, v in dims.items()},
                                   sort_keys=True, separators=(",", ":"))
            value = (ev["data"][_simple_path(meter["value_property"])]
                     if meter.get("value_property") else None)
            numeric = meter["aggregation"] in ("SUM", "MIN", "MAX", "LATEST")
            number = Decimal(value) if numeric else None
            text = str(value) if meter["aggregation"] == "UNIQUE_COUNT" else None
            rows.append((ev["subject"], meter["key"], meter["aggregation"], dims_json,
                         ev["time_ns"], ev["id"], ev["source"], number, text))
    return rows


# DuckDB groups and ranks; the numbers (up to BIGNUMERIC's 77 digits, beyond any
# SQL DECIMAL) travel as text and are reduced in Python with a context that cannot round.
_SQL = """
WITH r AS (
  SELECT *, (time_ns // {w}) * {w} AS window_ns FROM readings
),
ranked AS (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY subject, meter, dims, window_ns
                               ORDER BY time_ns DESC, id DESC, identity DESC) AS recency
  FROM r
)
SELECT subject, meter, dims, window_ns, any_value(aggregation), list(number),
       MAX(CASE WHEN recency = 1 THEN number END), COUNT(DISTINCT text), COUNT(*)
FROM ranked
GROUP BY subject, meter, dims, window_ns
"""


def _value(aggregation: str, numbers: list[str], latest: str | None, distinct: int,
           count: int) -> Decimal:
    if aggregation == "COUNT":
        return Decimal(count)
    if aggregation == "UNIQUE_COUNT":
        return Decimal(distinct)
    if aggregation == "LATEST":
        return Decimal(latest)
    numbers = [Decimal(n) for n in numbers]
    if aggregation == "SUM":
        total = Decimal(0)
        for n in numbers:
            total = WIDE.add(total, n)
        return total
    return min(numbers) if aggregation == "MIN" else max(numbers)


def expected_usage(accepted: list[dict], meters: list[dict], window_ns: int) -> dict:
    """{(subject, meter, dims json, window_start_ns): (Decimal value, event_count)}"""
    con = duckdb.connect()
    con.execute("CREATE TABLE readings (subject VARCHAR, meter VARCHAR, aggregation VARCHAR, "
                "dims VARCHAR, time_ns BIGINT, id VARCHAR, source VARCHAR, number VARCHAR, "
                "text VARCHAR, identity VARCHAR)")
    rows = readings(accepted, meters)
    if rows:
        # LATEST ties (equal time and id) go to the greater identity hash: 32 hex
        # digits sort as the numbers do
        con.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [r[:7] + (None if r[7] is None else str(r[7]), r[8],
                                  f"{identity_hash(r[6], r[5]):032x}") for r in rows])
    result = con.execute(_SQL.format(w=window_ns)).fetchall()
    return {(s, m, d, int(w)): (_value(a, numbers, latest, distinct, c), int(c))
            for s, m, d, w, a, numbers, latest, distinct, c in result}


def expected_fingerprints(accepted: list[dict], meters: list[dict], window_ns: int) -> dict:
    """{(subject, meter, dims json, window_start_ns): fingerprint}, keyed as expected_usage."""
    identities = defaultdict(list)
    for subject, meter, _, dims, time_ns, event_id, source, _, _ in readings(accepted, meters):
        identities[(subject, meter, dims, time_ns - time_ns % window_ns)].append(
            (source, event_id))
    return {key: fingerprint(found) for key, found in identities.items()}
