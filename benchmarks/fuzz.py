"""A long fuzz run of the per-event path: how many hostile inputs, and where they ended.

The strategies and checks of tests/test_fuzz.py (tests/adversarial.py), for
minutes instead of seconds: rounds of fresh random payloads (files, structured
and binary-mode Pub/Sub messages) through every pure
step (parse, FastAccept, validation, dedup signature, readings, both
aggregations, every row and message, each encoded as its sink would), and each
round's payloads through ComputeUsage and StreamUsage on the DirectRunner.
Prints the inputs tried and the outcome counts by error code; exits 1 with the
first failing payloads if any step raised or an output could not be stored.

    .venv/bin/python benchmarks/fuzz.py --seconds 600
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.events import Rejection, parse_payload  # noqa: E402
from tests.adversarial import (CATALOG, LIMITS, binary_messages, check_compute_usage,  # noqa: E402
                               check_payload, check_stream_usage, compressed_messages,
                               payloads)


def fuzz_round(round_seed: int, size: int, failures: list) -> list[tuple[bytes, dict | None]]:
    """`size` fresh payloads, binary-mode and compressed messages through the pure
    checks; returns them as (data, attributes)."""
    tried: list[tuple[bytes, dict | None]] = []

    @seed(round_seed)
    @settings(max_examples=size, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(payloads().map(lambda payload: (payload, None)), binary_messages(),
                     compressed_messages()))
    def one(message):
        tried.append(message)
        try:
            check_payload(message[0], attributes=message[1])
        except Exception:  # recorded, not raised: hypothesis would stop to shrink
            failures.append((message, traceback.format_exc()))

    one()
    return tried


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long to run")
    parser.add_argument("--round", type=int, default=500, help="payloads per round")
    parser.add_argument("--seed", type=int, default=None, help="first round's seed")
    args = parser.parse_args()
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds
    failures: list = []
    codes, records, inputs, rounds, pipeline_runs = Counter(), Counter(), 0, 0, 0
    while time.monotonic() < deadline and not failures:
        tried = fuzz_round(rng.randrange(2 ** 32), args.round, failures)
        inputs += len(tried)
        rounds += 1
        for payload, attributes in tried:
            for result in parse_payload(payload, "f:1", ("f", 1), CATALOG, LIMITS, None,
                                        attributes):
                codes[result.error_code if isinstance(result, Rejection) else "accepted"] += 1
        sample = random.Random(rounds).sample(tried, min(len(tried), 120))
        for check in (check_compute_usage, check_stream_usage):
            try:
                records.update(check([p for p, _ in sample], [a for _, a in sample]))
                pipeline_runs += 1
            except Exception:
                failures.append((sample, traceback.format_exc()))
        print(f"round {rounds}: {inputs} inputs, {sum(codes.values())} records", file=sys.stderr)
    print(json.dumps({
        "seconds": args.seconds, "rounds": rounds, "inputs": inputs,
        "records": sum(codes.values()), "accepted": codes["accepted"],
        "dead_lettered": sum(n for c, n in codes.items() if c != "accepted"),
        "dead_lettered_by_code": dict(sorted((c, n) for c, n in codes.items() if c != "accepted")),
        "pipeline_runs": pipeline_runs, "pipeline_records": sum(records.values()),
        "failures": len(failures)}, indent=2))
    for payload, trace in failures[:5]:
        print(f"FAILED on {payload!r:.300}\n{trace}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
