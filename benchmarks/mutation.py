"""Mutation score of the modules that decide a bill (docs/testing.md).

For each module, mutmut (the `mutation` extra of setup.py) makes small wrong
changes to it one at a time (`>` to `>=`, `+` to `-`, a dropped argument,
...) and runs the module's fast tests against each; a mutant no test fails
on "survived". Each module runs in a scratch copy of the working tree of its
own, so results never touch the checkout and modules can be measured one at
a time. Slow (minutes per module, mostly Beam pipeline start-up); not in CI.

    .venv/bin/python benchmarks/mutation.py                      # every module
    .venv/bin/python benchmarks/mutation.py transforms/windowing.py
    .venv/bin/python benchmarks/mutation.py --show-survivors schemas/values.py
    .venv/bin/python benchmarks/mutation.py --json before.json ...   # then, after new tests:
    .venv/bin/python benchmarks/mutation.py --recheck before.json ...
    .venv/bin/python benchmarks/mutation.py --recheck before.json schemas/events.py \
        --rerun 'schemas.events.x__parse__mutmut_*'    # every mutant of a changed function
    .venv/bin/python benchmarks/mutation.py transforms/batch_usage.py \
        --tests tests/test_batch_steps.py             # other tests than FAST_TESTS

Prints, per module, killed / tested and the score, and (with
--show-survivors) the diff of every surviving mutant, to be killed by a new
test or listed as equivalent in docs/testing.md.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = [sys.executable, "-m", "mutmut"]

# module -> the fast tests that cover it (no emulators, no subprocess pipelines). Left
# out: the fast path's property test (a minute per surviving mutant) and the recompute's
# (test_property.py: seven minutes a run on 2 shared cores under mutmut's tracing);
# tests/test_batch_steps.py checks the recompute's steps directly instead.
FASTPATH_AGREES = "tests/test_fastpath.py::test_agrees_on_the_messy_file"


def deselected(*tests: str) -> list[str]:
    """pytest arguments leaving `tests` out of the files selected beside them."""
    return [arg for test in tests for arg in ("--deselect", test)]


FAST_TESTS = {
    "schemas/values.py": ["tests/test_values.py", "tests/test_values_edges.py",
                          "tests/test_events.py", FASTPATH_AGREES],
    # events.py: without test_cloudevents.py's two pipeline tests and the fast path's
    # (15 of the 18 s a surviving mutant cost; they bill parsed events, which the other
    # tests check directly: run against the 24 survivors of 2026-12-01, the equivalents
    # of docs/testing.md, they killed none); test_encoding.py: the decompression path
    "schemas/events.py": ["tests/test_events.py", "tests/test_rejections.py",
                          "tests/test_cloudevents.py", "tests/test_encoding.py",
                          *deselected("tests/test_cloudevents.py::test_the_recompute_bills_every_"
                                      "mode_and_the_stored_raw_byte_identically",
                                      "tests/test_cloudevents.py::test_the_stream_bills_every_"
                                      "mode_byte_identically")],
    "schemas/aggregation.py": ["tests/test_aggregation.py", "tests/test_property.py"],
    "schemas/metering.py": ["tests/test_metering.py", "tests/test_transforms.py",
                            "tests/test_upgrade.py"],
    "transforms/dedup.py": ["tests/test_transforms.py", "tests/test_streaming.py",
                            "tests/test_dedup_state.py", "tests/test_upgrade.py",
                            "tests/test_event_coder.py",
                            "tests/test_dataflow_translation.py::"
                            "test_the_deduplication_shuffle_carries_events_in_their_compact_coder"],
    # the shuffle into deduplication: a wrong byte there is a wrong event downstream
    "transforms/event_coder.py": ["tests/test_event_coder.py"],
    "transforms/windowing.py": ["tests/test_streaming.py"],
    "transforms/batch_usage.py": [
        "tests/test_batch_steps.py",
        "tests/test_transforms.py::test_compute_usage_keeps_the_first_copy_and_counts_conflicts",
        "tests/test_transforms.py::test_compute_usage_in_blocks_gives_a_list_per_usage_shard"],
    # not the rating transform's pipeline test (20 s a run; transforms/rating.py's selection)
    "schemas/pricing.py": [
        "tests/test_pricing.py", "tests/test_pricing_rules.py",
        "tests/test_kinds.py::test_price_models_are_members_and_print_as_the_book_spells_them",
        "--deselect=tests/test_pricing.py::test_rate_subjects_transform"],
    # the commits' decisions against in-memory ledgers and their statements against a
    # recording client; tests/e2e/test_restate.py and test_guards.py run them on the emulator
    "transforms/restate.py": ["tests/test_restatement.py", "tests/test_bigquery_writes.py",
                              "tests/test_ledgers.py", "tests/test_commits.py",
                              "tests/test_storage_write.py"],
    "transforms/rating.py": ["tests/test_pricing.py::test_rate_subjects_transform",
                             "tests/test_rating.py", "tests/test_ledgers.py"],
}

KILLED = {"killed", "timeout", "caught by type check"}


def _status(exit_code) -> str:
    from mutmut.stats import status_by_exit_code
    return status_by_exit_code[exit_code]


def scratch_copy(module: str, tests: list[str]) -> Path:
    """The tracked and untracked (not ignored) files of the worktree, with a mutmut config."""
    work = Path(tempfile.mkdtemp(prefix="tallyflow-mutation-"))
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
    package = module.split("/")[0]
    lines = ["[mutmut]", f"source_paths = {package}", f"only_mutate = {module}",
             "also_copy =", *(f"    {p}" for p in ("schemas", "transforms", "pipelines",
                                                     "tallyflow", "templates", "pytest.ini")
                              if p != package),
             "pytest_add_cli_args_test_selection =", *(f"    {t}" for t in tests),
             "pytest_add_cli_args =", "    -p", "    no:cacheprovider",
             "    --hypothesis-profile=mutation",
             "use_git_change_detection = false", ""]
    (work / "setup.cfg").write_text("\n".join(lines))
    return work


def measure(module: str, tests: list[str], jobs: int, show: bool,
            earlier: dict | None = None, rerun: list[str] = ()) -> dict:
    """Runs every mutant of `module`; with `earlier` (this module's result of a previous
    run), only the mutants that survived it and those matching a `rerun` pattern, the
    others counting as killed again. A function changed since `earlier` needs a pattern:
    mutmut numbers a function's mutants in order, so its survivors' numbers moved."""
    work = scratch_copy(module, tests)
    only = sorted(earlier["survivors"]) + list(rerun) if earlier else []
    run = subprocess.run([*MUTMUT, "run", "--max-children", str(jobs), *only], cwd=work,
                         capture_output=True, text=True)
    meta = work / "mutants" / f"{module}.meta"
    if not meta.exists():
        sys.stderr.write(run.stdout[-3000:] + run.stderr[-3000:])
        raise SystemExit(f"mutmut produced no results for {module} (scratch copy: {work})")
    by_mutant = {name: _status(code)
                 for name, code in json.loads(meta.read_text())["exit_code_by_key"].items()}
    if earlier:
        by_mutant = {name: by_mutant[name] if any(fnmatch.fnmatchcase(name, pattern)
                                                  for pattern in only) else "killed"
                     for name in by_mutant}
    survivors = sorted(name for name, status in by_mutant.items() if status not in KILLED)
    result = {"module": module, "mutants": len(by_mutant),
              "killed": len(by_mutant) - len(survivors),
              "survivors": {name: by_mutant[name] for name in survivors}}
    if show:
        for name in survivors:
            diff = subprocess.run([*MUTMUT, "show", name], cwd=work, capture_output=True,
                                  text=True).stdout
            print(f"--- {name} ({by_mutant[name]})\n{diff}")
    shutil.rmtree(work)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(FAST_TESTS),
                        help="modules to mutate (default: every bill-deciding module)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run in parallel")
    parser.add_argument("--show-survivors", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--recheck", help="results (--json) of an earlier run: rerun only "
                                          "its survivors, after new tests")
    parser.add_argument("--rerun", nargs="+", default=[],
                        help="with --recheck: also every mutant matching these patterns "
                             "(mutmut names, e.g. 'schemas.events.x__parse__mutmut_*')")
    parser.add_argument("--tests", nargs="+", help="run these tests against the mutants "
                                                   "instead of the module's FAST_TESTS")
    args = parser.parse_args(argv)
    earlier = ({r["module"]: r for r in json.loads(Path(args.recheck).read_text())}
               if args.recheck else {})
    results = []
    for module in args.modules:
        result = measure(module, args.tests or FAST_TESTS[module], args.jobs, args.show_survivors,
                         earlier.get(module), args.rerun)
        results.append(result)
        score = result["killed"] / result["mutants"] if result["mutants"] else 1
        print(f"{module:28} {result['killed']:4} / {result['mutants']:<4} killed  "
              f"{score:6.1%}", flush=True)
        if args.json:  # after every module: a long run stopped halfway keeps its results
            Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True))
    killed, total = sum(r["killed"] for r in results), sum(r["mutants"] for r in results)
    if total:
        print(f"{'all':28} {killed:4} / {total:<4} killed  {killed / total:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
