"""Batch recompute throughput and peak memory, side by side with DuckDB.

Input is the seeded synthetic stream behind `tallyflow publish --synthetic`
(8 meters, Zipf-distributed customers, 5% duplicates of which 10% conflict,
1% invalid events), written once per configuration under --data-dir.

Sizes (--sizes) and shapes (--shapes): for each, times
- tallyflow recompute with its default settings (the DirectRunner in memory, one process);
- the same with --direct_running_mode=multi_processing --direct_num_workers=2;
- DuckDB computing the same aggregation (parse, dedup by (source, id) keeping
  the first line, eight meters, hourly windows, exact DECIMAL) in one process.

Shapes: `low` cardinality is 500 customers at 50 events a second of event
time, so many events fold into each usage row; `high` is 2,500 customers over
3 days of event time, about one usage row per event (the long tail of real
billing data, where the cost per usage row is the whole run).

Cardinality (--cardinality-events, --customers): at a fixed size, how time
and memory grow with the number of distinct keys (customers x meters x
dimensions x windows), plus one run where every `user.active` event has a
new user (high-cardinality UNIQUE_COUNT).

Each run is a separate process measured with /usr/bin/time (wall seconds and
peak RSS of the largest process). tallyflow's usage.jsonl is checked against
DuckDB's result for every run: row for row, value for value.

    .venv/bin/python benchmarks/batch_recompute.py --sizes 100000 1000000
    .venv/bin/python benchmarks/batch_recompute.py --sizes 1000000 --shapes high \
        --modes "tallyflow defaults"
    .venv/bin/python benchmarks/batch_recompute.py --sizes --customers 50 5000 50000
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

DUCKDB_SQL = r"""
CREATE TABLE lines AS
  SELECT row_number() OVER () AS line, line AS j
  FROM read_csv('{path}', columns={{'line': 'VARCHAR'}}, header=false, delim='\x1f',
                quote='', escape='', auto_detect=false);
CREATE TABLE ev AS
  SELECT line,
         json_extract_string(j, '$.source') AS source, json_extract_string(j, '$.id') AS id,
         json_extract_string(j, '$.type') AS type, json_extract_string(j, '$.subject') AS subject,
         json_extract_string(j, '$.time') AS time_text,
         TRY_CAST(json_extract_string(j, '$.time') AS TIMESTAMPTZ) AS t,
         json_extract(j, '$.data') AS d
  FROM lines WHERE json_valid(j) AND json_extract_string(j, '$.specversion') = '1.0';
-- valid events only (an invalid one is dead-lettered and takes no part in deduplication):
-- attributes present and non-empty, an RFC 3339 time, every meter's value a decimal >= 0
CREATE TABLE firsts AS
  SELECT * FROM ev
  WHERE source <> '' AND id <> '' AND type <> '' AND subject <> '' AND t IS NOT NULL
    AND regexp_full_match(time_text,
          '\d{{4}}-\d{{2}}-\d{{2}}[Tt]\d{{2}}:\d{{2}}:\d{{2}}(\.\d+)?([Zz]|[+-]\d{{2}}:\d{{2}})')
    AND CASE type
      WHEN 'api.request' THEN TRY_CAST(d->>'bytes_out' AS DECIMAL(38,9)) >= 0
      WHEN 'llm.completion' THEN TRY_CAST(d->>'input_tokens' AS DECIMAL(38,9)) >= 0
        AND TRY_CAST(d->>'output_tokens' AS DECIMAL(38,9)) >= 0
        AND TRY_CAST(d->>'cost_usd' AS DECIMAL(38,9)) >= 0
      WHEN 'user.active' THEN d->>'user_id' IS NOT NULL
      WHEN 'connection.gauge' THEN TRY_CAST(d->>'connections' AS DECIMAL(38,9)) >= 0
      WHEN 'storage.snapshot' THEN TRY_CAST(d->>'gb' AS DECIMAL(38,9)) >= 0
      ELSE TRUE END
  QUALIFY row_number() OVER (PARTITION BY source, id ORDER BY line) = 1;
CREATE TABLE readings AS
  SELECT subject, 'api_requests' AS meter, json_extract_string(d, '$.method') AS dim,
         time_bucket(INTERVAL 1 HOUR, t) AS w, 1::DECIMAL(38,9) AS v, NULL AS u, t, id
    FROM firsts WHERE type = 'api.request'
  UNION ALL SELECT subject, 'bytes_out', NULL, time_bucket(INTERVAL 1 HOUR, t),
         TRY_CAST(json_extract_string(d, '$.bytes_out') AS DECIMAL(38,9)), NULL, t, id
    FROM firsts WHERE type = 'api.request'
  UNION ALL SELECT subject, 'llm_input_tokens', json_extract_string(d, '$.model'),
         time_bucket(INTERVAL 1 HOUR, t),
         TRY_CAST(json_extract_string(d, '$.input_tokens') AS DECIMAL(38,9)), NULL, t, id
    FROM firsts WHERE type = 'llm.completion'
  UNION ALL SELECT subject, 'llm_output_tokens', json_extract_string(d, '$.model'),
         time_bucket(INTERVAL 1 HOUR, t),
         TRY_CAST(json_extract_string(d, '$.output_tokens') AS DECIMAL(38,9)), NULL, t, id
    FROM firsts WHERE type = 'llm.completion'
  UNION ALL SELECT subject, 'llm_cost_usd', json_extract_string(d, '$.model'),
         time_bucket(INTERVAL 1 HOUR, t),
         TRY_CAST(json_extract_string(d, '$.cost_usd') AS DECIMAL(38,9)), NULL, t, id
    FROM firsts WHERE type = 'llm.completion'
  UNION ALL SELECT subject, 'active_users', NULL, time_bucket(INTERVAL 1 HOUR, t), NULL,
         json_extract_string(d, '$.user_id'), t, id
    FROM firsts WHERE type = 'user.active'
  UNION ALL SELECT subject, 'peak_connections', NULL, time_bucket(INTERVAL 1 HOUR, t),
         TRY_CAST(json_extract_string(d, '$.connections') AS DECIMAL(38,9)), NULL, t, id
    FROM firsts WHERE type = 'connection.gauge'
  UNION ALL SELECT subject, 'storage_gb', NULL, time_bucket(INTERVAL 1 HOUR, t),
         TRY_CAST(json_extract_string(d, '$.gb') AS DECIMAL(38,9)), NULL, t, id
    FROM firsts WHERE type = 'storage.snapshot';
COPY (
  SELECT subject, meter, dim, w,
         CASE meter WHEN 'active_users' THEN COUNT(DISTINCT u)::DECIMAL(38,9)
                    WHEN 'peak_connections' THEN MAX(v)
                    WHEN 'storage_gb' THEN arg_max(v, (t, id))
                    ELSE SUM(v) END AS value,
         COUNT(*) AS events
  FROM readings GROUP BY subject, meter, dim, w
) TO '{out}' (FORMAT csv);
"""


MODES = {
    "tallyflow defaults": [],
    "tallyflow 2 processes": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}

# shape -> (customers, event-time span in hours or None for 50 events a second)
SHAPES = {"low": (500, None), "high": (2500, 72)}


def synthetic_file(directory: Path, events: int, customers: int = 500,
                   max_users: int = 60, event_types: tuple[str, ...] | None = None,
                   span_hours: int | None = None) -> Path:
    rate = 50 if span_hours is None else events / (span_hours * 3600)
    name = (f"synthetic-{events}-c{customers}-u{max_users}"
            f"{'-' + '+'.join(event_types) if event_types else ''}"
            f"{f'-h{span_hours}' if span_hours else ''}")
    path = directory / f"{name}.jsonl"
    if not path.exists():
        types = f", event_types={event_types!r}" if event_types else ""
        subprocess.run([PYTHON, "-c", f"""
from tallyflow.local.synthetic import SyntheticConfig, generate
messages = generate(SyntheticConfig(seed=1, events={events}, customers={customers}, rate={rate!r},
                                    duplicate_fraction=0.05, conflict_fraction=0.1,
                                    invalid_fraction=0.01, max_users={max_users}{types}))
with open({str(path) + '.tmp'!r}, 'wb') as f:
    for m in messages:
        f.write(m.data + b'\\n')
"""], cwd=ROOT, check=True)
        Path(str(path) + ".tmp").rename(path)
    return path


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a command, from GNU time."""
    return measure_cpu(command)[:2]


def measure_cpu(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds: user + system, its children included)."""
    result = subprocess.run(["/usr/bin/time", "-v", *command], cwd=ROOT, capture_output=True,
                            text=True)
    if result.returncode:  # the command's own last lines, before GNU time's report
        own = result.stderr.split("\tCommand being timed:")[0].splitlines()
        raise RuntimeError(f"{' '.join(command)[:300]} failed: " + "\n".join(own[-25:]))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", result.stderr)
    parts = [float(p) for p in wall.group(1).split(":")]  # float-ok: seconds
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): (\S+)", result.stderr).group(1))
              for kind in ("User", "System"))  # float-ok: seconds
    return seconds, rss_kb / 1024, cpu


def duckdb_rows(path: Path) -> dict:
    """DuckDB's result: (subject, meter, dimension value, window start) -> (value, events)."""
    with path.open() as f:
        lines = csv.reader(f)
        next(lines)  # header
        return {(r[0], r[1], r[2] or None, r[3][:19].replace(" ", "T")): (Decimal(r[4]), int(r[5]))
                for r in lines}


def tallyflow_rows(out: Path) -> dict:
    rows = {}
    with (out / "usage.jsonl").open() as f:
        for line in f:
            r = json.loads(line)
            dimension = next(iter(r["dimensions"].values()), None)
            rows[(r["subject"], r["meter"], dimension, r["window_start"][:19])] = (
                Decimal(r["value"]), r["event_count"])
    return rows


def compare(data: Path, label: str, runs: dict[str, list[str]], path: Path) -> dict:
    """Times DuckDB and each tallyflow mode on `path`; checks they agree exactly."""
    reference = data / f"duckdb-{label}.csv"
    sql = DUCKDB_SQL.format(path=path, out=reference)
    results = {"duckdb (reference)": measure(
        [PYTHON, "-c", f"import duckdb; duckdb.connect().execute({sql!r})"])}
    expected = duckdb_rows(reference)
    for name, extra in runs.items():
        out = data / f"out-{label}-{name.split()[-1]}"
        results[name] = measure([PYTHON, "-m", "tallyflow.cli", "recompute", "--meters",
                                 "tallyflow/examples/meters.yaml", "--input", str(path),
                                 "--output-dir", str(out), *extra])
        if tallyflow_rows(out) != expected:
            raise RuntimeError(f"{name} on {path.name} differs from DuckDB's result")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("--cardinality-events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, nargs="*", default=[],
                        help="customer counts for the cardinality runs (e.g. 50 5000 50000); "
                             "with any, a high-cardinality UNIQUE_COUNT run is added")
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "tallyflow-bench"))
    args = parser.parse_args()
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    if args.sizes:
        print(f"{'events':>9} {'shape':<5} {'usage rows':>10} {'run':<22} {'seconds':>8} "
              f"{'events/s':>9} {'peak MiB':>9} {'vs DuckDB':>9} {'memory':>7} {'load':>5}",
              flush=True)
    for size in args.sizes:
        for shape in args.shapes:
            customers, span = SHAPES[shape]
            path = synthetic_file(data, size, customers=customers, span_hours=span)
            results = compare(data, path.stem, {m: MODES[m] for m in args.modes}, path)
            keys = len(duckdb_rows(data / f"duckdb-{path.stem}.csv"))
            duck, duck_mib = results["duckdb (reference)"]
            load = os.getloadavg()[0]
            for name, (seconds, mib) in results.items():
                print(f"{size:>9} {shape:<5} {keys:>10} {name:<22} {seconds:>8.1f} "
                      f"{size / seconds:>9.0f} {mib:>9.0f} {seconds / duck:>8.1f}x "
                      f"{mib / duck_mib:>6.2f}x {load:>5.1f}", flush=True)
    if not args.customers:
        return 0
    size = args.cardinality_events
    print(f"\n{size} events: {'input':<36} {'usage rows':>10} {'run':<20} {'seconds':>8} "
          f"{'peak MiB':>9}", flush=True)
    inputs = [(f"{c} customers", synthetic_file(data, size, customers=c)) for c in args.customers]
    inputs.append(("user.active, a new user per event",
                   synthetic_file(data, size, customers=50, max_users=10 ** 9,
                                  event_types=("user.active",))))
    for what, path in inputs:
        results = compare(data, path.stem, {"tallyflow defaults": []}, path)
        keys = len(duckdb_rows(data / f"duckdb-{path.stem}.csv"))
        for name, (seconds, mib) in results.items():
            print(f"{'':>{len(str(size)) + 8}} {what:<36} {keys:>10} {name.split()[0]:<20} "
                  f"{seconds:>8.1f} {mib:>9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
