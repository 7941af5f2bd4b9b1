"""An independent reference for usage: plain Python for readings, DuckDB for grouping.

It shares no code with tallyflow's parsing or aggregation: values arrive as
the Decimals the test generated (not parsed from the payload), are scaled to
integer nano-units (HUGEINT in DuckDB), and grouped with SQL. If tallyflow and
this disagree on a row, one of them is wrong.
"""
from __future__ import annotations

import json
from decimal import Context, Decimal

import duckdb

WIDE = Context(prec=100)  # the default context would round 38-digit values


def _simple_path(path: str) -> str:
    assert path.startswith("$.") and "." not in path[2:], path
    return path[2:]


def readings(accepted: list[dict], meters: list[dict]) -> list[tuple]:
    """accepted: {source, id, subject, type, time_ns, data} with the generated values.

    -> (subject, meter, aggregation, dimensions json, time_ns, id, source, nano, text)
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
            nano = int(WIDE.scaleb(Decimal(value), 9)) if numeric else None
            text = str(value) if meter["aggregation"] == "UNIQUE_COUNT" else None
            rows.append((ev["subject"], meter["key"], meter["aggregation"], dims_json,
                         ev["time_ns"], ev["id"], ev["source"], nano, text))
    return rows


_SQL = """
WITH r AS (
  SELECT *, (time_ns // {w}) * {w} AS window_ns FROM readings
),
ranked AS (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY subject, meter, dims, window_ns
                               ORDER BY time_ns DESC, id DESC) AS recency FROM r
)
SELECT subject, meter, dims, window_ns,
       CASE any_value(aggregation)
         WHEN 'SUM' THEN SUM(nano)
         WHEN 'MIN' THEN MIN(nano)
         WHEN 'MAX' THEN MAX(nano)
         WHEN 'LATEST' THEN MAX(CASE WHEN recency = 1 THEN nano END)
         WHEN 'COUNT' THEN COUNT(*) * 1000000000
         WHEN 'UNIQUE_COUNT' THEN COUNT(DISTINCT text) * 1000000000
       END AS value_nano,
       COUNT(*) AS event_count
FROM ranked
GROUP BY subject, meter, dims, window_ns
"""


def expected_usage(accepted: list[dict], meters: list[dict], window_ns: int) -> dict:
    """{(subject, meter, dims json, window_start_ns): (Decimal value, event_count)}"""
    con = duckdb.connect()
    con.execute("CREATE TABLE readings (subject VARCHAR, meter VARCHAR, aggregation VARCHAR, "
                "dims VARCHAR, time_ns BIGINT, id VARCHAR, source VARCHAR, nano HUGEINT, "
                "text VARCHAR)")
    rows = readings(accepted, meters)
    if rows:
        con.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [r[:7] + (None if r[7] is None else str(r[7]), r[8]) for r in rows])
    result = con.execute(_SQL.format(w=window_ns)).fetchall()
    return {(s, m, d, int(w)): (Decimal(f"{int(v)}E-9"), int(c)) for s, m, d, w, v, c in result}
