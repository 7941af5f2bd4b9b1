"""`tallyflow recompute` end to end on a generated messy file: every row exact, value,
count and fingerprint."""
import gzip
import json
import os
import subprocess
import sys
from decimal import Decimal

import pytest
import yaml

from schemas.values import parse_rfc3339
from tests.conftest import EXAMPLE_METERS, ROOT
from tests.messy import generate
from tests.reference import expected_fingerprints, expected_usage, fingerprint

HOUR_NS = 3600 * 10 ** 9


def run_recompute(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tallyflow.cli", "recompute", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def messy():
    return generate(seed=20261121, events=3000)


@pytest.fixture(scope="module")
def recomputed(messy, tmp_path_factory):
    base = tmp_path_factory.mktemp("recompute")
    # two files: the dedup rule "smallest path:line wins" spans files
    half = len(messy.lines) // 2
    (base / "a.jsonl").write_bytes(b"\n".join(messy.lines[:half]) + b"\n")
    (base / "b.jsonl").write_bytes(b"\n".join(messy.lines[half:]) + b"\n")
    out = base / "out"
    result = run_recompute("--meters", str(EXAMPLE_METERS), "--input", str(base / "*.jsonl"),
                           "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return base, out, half


def test_every_usage_row_is_exact(messy, recomputed):
    _, out, _ = recomputed
    meters = yaml.safe_load(EXAMPLE_METERS.read_text())["meters"]
    fingerprints = expected_fingerprints(messy.accepted, meters, HOUR_NS)
    expected = {key: (value, count, fingerprints[key]) for key, (value, count)
                in expected_usage(messy.accepted, meters, HOUR_NS).items()}
    got = {}
    for row in read_jsonl(out / "usage.jsonl"):
        key = (row["subject"], row["meter"],
               json.dumps(row["dimensions"], sort_keys=True, separators=(",", ":")),
               parse_rfc3339(row["window_start"]))
        assert key not in got, f"duplicate usage row {key}"
        assert parse_rfc3339(row["window_end"]) - key[3] == HOUR_NS
        assert "e" not in row["value"].lower(), row["value"]
        got[key] = (Decimal(row["value"]), row["event_count"], row["fingerprint"])
    assert len(expected) > 500
    assert got == expected


def test_every_rejected_record_is_dead_lettered_once(messy, recomputed):
    base, out, half = recomputed
    dead = read_jsonl(out / "dead_letter.jsonl")

    def position(p):  # ground truth uses the line number in the concatenated stream
        path, _, rest = p.partition(":")
        line, _, element = rest.partition("#")
        n = int(line) + (half if path.endswith("b.jsonl") else 0)
        return f"{n}#{element}" if element else str(n)

    got = sorted((position(d["position"]), d["error_code"]) for d in dead)
    assert got == sorted(messy.dead)
    assert all(d["error_message"] for d in dead)


def test_summary_accounts_for_every_record(messy, recomputed):
    _, out, _ = recomputed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lines_read"] == len(messy.lines)
    assert summary["records_read"] == messy.records
    assert summary["events_accepted"] == len(messy.accepted)
    assert summary["duplicates"] == messy.duplicates
    assert summary["conflicting_duplicates"] == messy.conflicts
    assert summary["dead_lettered"] == len(messy.dead)
    assert summary["unmetered"] == sum(e["type"] == "admin.login" for e in messy.accepted)
    assert summary["conservation"]["holds"] is True
    assert messy.records == len(messy.accepted) + messy.duplicates + len(messy.dead)


def test_period_selects_whole_windows(messy, recomputed):
    base, out, _ = recomputed
    period = base / "period"
    result = run_recompute("--meters", str(EXAMPLE_METERS), "--input", str(base / "*.jsonl"),
                           "--output-dir", str(period), "--window", "15m",
                           "--period-start", "2026-11-02T00:00:00Z",
                           "--period-end", "2026-11-02T06:00:00+00:00")
    assert result.returncode == 0, result.stderr[-3000:]
    start, end = parse_rfc3339("2026-11-02T00:00:00Z"), parse_rfc3339("2026-11-02T06:00:00Z")
    inside = [e for e in messy.accepted if start <= e["time_ns"] < end]
    meters = yaml.safe_load(EXAMPLE_METERS.read_text())["meters"]
    expected = expected_usage(inside, meters, 15 * 60 * 10 ** 9)
    got = {(r["subject"], r["meter"],
            json.dumps(r["dimensions"], sort_keys=True, separators=(",", ":")),
            parse_rfc3339(r["window_start"])): (Decimal(r["value"]), r["event_count"])
           for r in read_jsonl(period / "usage.jsonl")}
    assert got == expected
    summary = json.loads((period / "summary.json").read_text())
    assert summary["outside_period"] == len(messy.accepted) - len(inside)


@pytest.mark.parametrize("args,message", [
    (["--window", "1h", "--period-start", "2026-11-02T00:30:00Z",
      "--period-end", "2026-11-02T02:00:00Z"], "must align"),
    (["--window", "2x"], "duration"),
    (["--window", "7m"], "divides a day"),  # an odd size once ended in OverflowError
    (["--period-start", "2026-11-02T00:00:00Z"], "go together"),
])
def test_bad_arguments_fail_with_one_line(recomputed, args, message):
    base, _, _ = recomputed
    result = run_recompute("--meters", str(EXAMPLE_METERS), "--input", str(base / "a.jsonl"),
                           "--output-dir", str(base / "bad"), *args)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]


def test_missing_input_is_a_runtime_failure_naming_the_pattern(tmp_path):
    pattern = str(tmp_path / "nothing-*.jsonl")
    result = run_recompute("--meters", str(EXAMPLE_METERS), "--input", pattern,
                           "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1] == (
        f"tallyflow recompute: cannot read {pattern}: no file matches it")


def test_an_unreadable_meter_catalog_is_a_bad_argument(tmp_path):
    missing = tmp_path / "meters.yaml"
    result = run_recompute("--meters", str(missing), "--input", str(tmp_path / "*.jsonl"),
                           "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"tallyflow recompute: cannot read {missing}: ")


def only_results(folder):
    """The result files in `folder` and any staging folder left beside it."""
    beside = sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(folder.name))
    inside = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
    return beside, inside


@pytest.mark.parametrize("damage,reason", [
    (lambda whole: whole[:len(whole) * 2 // 5],
     "EOFError: the gzip stream ends before its end marker (truncated)"),
    (lambda whole: gzip.decompress(whole),
     "corrupt compressed data (Error -3 while decompressing data: incorrect header check)"),
])
def test_a_damaged_gzip_fails_the_run_and_leaves_no_results(messy, tmp_path, damage, reason):
    whole = gzip.compress(b"\n".join(messy.lines) + b"\n")
    good, bad, out = tmp_path / "good.jsonl.gz", tmp_path / "bad.jsonl.gz", tmp_path / "out"
    good.write_bytes(whole)
    bad.write_bytes(damage(whole))
    first = run_recompute("--meters", str(EXAMPLE_METERS), "--input", str(good),
                          "--output-dir", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    assert only_results(out) == (["out"], ["dead_letter.jsonl", "summary.json", "usage.jsonl"])

    result = run_recompute("--meters", str(EXAMPLE_METERS), "--input", str(good),
                           "--input", str(bad), "--output-dir", str(out))
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        "tallyflow recompute: running the batch pipeline ...",
        f"tallyflow recompute: cannot read {bad}: {reason}"]
    assert result.stdout == ""
    # the previous run's results are gone, and nothing half-written took their place
    assert only_results(out) == (["out"], [])


def conflicting_copies(folder):
    """a.jsonl and b.jsonl hold the same event identity with different values."""
    event = {"specversion": "1.0", "source": "//gateway", "id": "evt-1", "subject": "acme",
             "type": "api.request", "time": "2026-11-02T10:00:00Z",
             "data": {"method": "GET", "status": 200, "bytes_out": 0}}
    for name, size in (("a.jsonl", 111), ("b.jsonl", 999)):
        copy = {**event, "data": {**event["data"], "bytes_out": size}}
        (folder / name).write_text(json.dumps(copy) + "\n")
    return 111  # a.jsonl sorts first as a canonical path: its copy is the one billed


def bytes_out(out):
    return [r["value"] for r in read_jsonl(out / "usage.jsonl") if r["meter"] == "bytes_out"]


def test_which_copy_wins_does_not_depend_on_how_a_path_is_spelled(tmp_path):
    expected = conflicting_copies(tmp_path)
    spellings = [[str(tmp_path / "b.jsonl"), "a.jsonl"], ["b.jsonl", "a.jsonl"],
                 ["./b.jsonl", str(tmp_path / "a.jsonl")], [str(tmp_path / "*.jsonl")]]
    results = []
    for n, inputs in enumerate(spellings):
        out = tmp_path / f"out{n}"
        args = [arg for path in inputs for arg in ("--input", path)]
        done = run_recompute("--meters", str(EXAMPLE_METERS), *args, "--output-dir", str(out),
                             cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(((out / "usage.jsonl").read_text(), bytes_out(out)))
    assert all(result == results[0] for result in results)
    assert results[0][1] == [str(expected)]


def test_a_file_two_patterns_match_is_counted_once(tmp_path):
    conflicting_copies(tmp_path)
    out = tmp_path / "out"
    done = run_recompute("--meters", str(EXAMPLE_METERS), "--input", "*.jsonl",
                         "--input", "a.jsonl", "--input", str(tmp_path / "a.jsonl"),
                         "--output-dir", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["lines_read"], summary["duplicates"]) == (2, 1)


def test_bad_arguments_leave_the_previous_results_alone(tmp_path):
    conflicting_copies(tmp_path)
    out = tmp_path / "out"
    args = ["--meters", str(EXAMPLE_METERS), "--input", str(tmp_path / "*.jsonl"),
            "--output-dir", str(out)]
    assert run_recompute(*args).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = run_recompute(*args, "--window", "2x")
    assert refused.returncode == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_bignumeric_meter_end_to_end(tmp_path):
    """38 fraction digits and 36 integer digits, beyond NUMERIC, summed exactly into
    usage.jsonl; 39 fraction digits are dead-lettered, not rounded."""
    (tmp_path / "meters.yaml").write_text(yaml.safe_dump({"meters": [
        {"key": "stake", "event_type": "bet", "aggregation": "SUM", "value_property": "$.stake",
         "precision": "BIGNUMERIC", "allow_negative": True}]}))
    stakes = ["123456789012345678901234567890123456.12345678901234567890123456789012345678",
              "0.00000000000000000000000000000000000001",
              "-0.5", "876543210987654321098765432109876543.5"]
    lines = [json.dumps({"specversion": "1.0", "id": f"b{n}", "source": "//bets", "type": "bet",
                         "subject": "acme", "time": "2026-11-02T10:30:00Z",
                         "data": {"stake": stake}}) for n, stake in enumerate(stakes)]
    lines.append(lines[0].replace('"b0"', '"b9"').replace("345678\"", "3456789\""))
    (tmp_path / "bets.jsonl").write_text("\n".join(lines) + "\n")
    result = run_recompute("--meters", str(tmp_path / "meters.yaml"),
                           "--input", str(tmp_path / "bets.jsonl"),
                           "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    [row] = read_jsonl(tmp_path / "out" / "usage.jsonl")
    # by hand: 123456789012345678901234567890123456 + 876543210987654321098765432109876543
    # = 999999999999999999999999999999999999; fractions .12345678901234567890123456789012345678
    # + .00000000000000000000000000000000000001 - .5 + .5
    assert row["value"] == ("999999999999999999999999999999999999."
                            "12345678901234567890123456789012345679")
    assert (row["event_count"], row["window_start"]) == (4, "2026-11-02T10:00:00Z")
    assert row["fingerprint"] == fingerprint(("//bets", f"b{n}") for n in range(4))
    [dead] = read_jsonl(tmp_path / "out" / "dead_letter.jsonl")
    assert (dead["event_id"], dead["error_code"]) == ("b9", "VALUE_OUT_OF_RANGE")
