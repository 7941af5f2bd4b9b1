"""Batch recompute throughput and peak memory, side by side with DuckDB.

For each size, writes a seeded synthetic JSONL file (the generator behind
`tallyflow publish --synthetic`: 8 meters, duplicates, conflicts, invalid
events), then times:

- tallyflow recompute on the DirectRunner, in memory (one process);
- the same with --direct_running_mode=multi_processing --direct_num_workers=2;
- DuckDB computing the same aggregation (parse, dedup by (source, id) keeping
  the first line, eight meters, hourly windows, exact DECIMAL) in one process.

Each run is a separate process measured with /usr/bin/time (wall seconds and
peak RSS). Prints a table; the headline is tallyflow / DuckDB wall time.

    .venv/bin/python benchmarks/batch_recompute.py --sizes 100000 1000000
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
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
         TRY_CAST(json_extract_string(j, '$.time') AS TIMESTAMPTZ) AS t,
         json_extract(j, '$.data') AS d
  FROM lines WHERE json_valid(j) AND json_extract_string(j, '$.specversion') = '1.0';
CREATE TABLE firsts AS
  SELECT * FROM ev WHERE source IS NOT NULL AND id IS NOT NULL AND subject IS NOT NULL
     AND t IS NOT NULL
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


def synthetic_file(size: int, directory: Path) -> Path:
    path = directory / f"synthetic-{size}.jsonl"
    if not path.exists():
        subprocess.run([PYTHON, "-c", f"""
from pipelines.synthetic import SyntheticConfig, generate
messages = generate(SyntheticConfig(seed=1, events={size}, customers=500, rate=50,
                                    duplicate_fraction=0.05, conflict_fraction=0.1,
                                    invalid_fraction=0.01))
with open({str(path)!r}, 'wb') as f:
    for m in messages:
        f.write(m.data + b'\\n')
"""], cwd=ROOT, check=True)
    return path


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a command, from GNU time."""
    result = subprocess.run(["/usr/bin/time", "-v", *command], cwd=ROOT, capture_output=True,
                            text=True)
    if result.returncode:
        raise RuntimeError(f"{command[:3]} failed: {result.stderr.splitlines()[-25:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", result.stderr)
    parts = [float(p) for p in wall.group(1).split(":")]  # float-ok: seconds
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return seconds, rss_kb / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "tallyflow-bench"))
    args = parser.parse_args()
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    modes = {
        "tallyflow in-memory": [],
        "tallyflow 2 processes": ["--direct_running_mode=multi_processing",
                                  "--direct_num_workers=2"],
    }
    print(f"{'events':>9} {'run':<22} {'seconds':>8} {'events/s':>9} {'peak MiB':>9} "
          f"{'vs DuckDB':>9}", flush=True)
    for size in args.sizes:
        path = synthetic_file(size, data)
        sql = DUCKDB_SQL.format(path=path, out=data / f"duckdb-{size}.csv")
        duck = measure([PYTHON, "-c", f"import duckdb; duckdb.connect().execute({sql!r})"])
        results = {"duckdb (reference)": duck}
        for name, extra in modes.items():
            results[name] = measure([PYTHON, "-m", "pipelines.cli", "recompute", "--meters",
                                     "examples/meters.yaml", "--input", str(path),
                                     "--output-dir", str(data / f"out-{size}"), *extra])
        for name, (seconds, mib) in results.items():
            print(f"{size:>9} {name:<22} {seconds:>8.1f} {size / seconds:>9.0f} {mib:>9.0f} "
                  f"{seconds / duck[0]:>8.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
