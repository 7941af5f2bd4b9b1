"""`tallyflow export` and `tallyflow reconcile --provider` on the local stack, against
local provider servers (tests/provider_servers/) through the official SDKs.

A closed day of fractional usage (three customers, two meters, dimensions) is
committed as recompute revision 1; it is past Orb's grace period, so Orb gets
it through backfills. For each provider:
1. an export is killed (SIGKILL) while the provider has accepted a request
   whose response never arrived; the rerun meets injected 429s (with
   Retry-After) and 5xx and must finish;
2. the provider then holds exactly tallyflow's totals (Stripe: each
   customer x meter total rounded once) and the reconciliation says MATCH;
3. a second revision restates some windows and deletes one; an export sends
   the corrections; totals and reconciliation match again, and a further run
   sends nothing;
4. usage changed behind the provider's back makes the reconciliation exit 1.
Expected totals are computed here from the rows inserted, never read back.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from schemas.values import format_time
from tests.conftest import ROOT
from tests.provider_servers.cases import CASES

DATASET = "export_e2e"
NS, HOUR, DAY = 1_000_000_000, 3600 * 1_000_000_000, 24 * 3600 * 1_000_000_000
NOW = time.time_ns()
TODAY = NOW - NOW % DAY
SUBJECTS = ("acme", "bolt", "cora")
METERS = {"calls": "api_calls", "tokens": "llm_tokens"}


def usage(seed: int) -> dict:
    """{(subject, meter, dims, hour): Decimal} of one day, fractional, seeded."""
    rng = random.Random(seed)
    rows = {}
    for subject in SUBJECTS:
        for meter in METERS:
            for hour in rng.sample(range(24), 9):
                for dims in rng.sample(['{}', '{"region":"eu"}', '{"region":"us"}'], 2):
                    rows[(subject, meter, dims, hour)] = Decimal(rng.randint(0, 40000)) / 1000
    return rows


def commit_revision(client, stack, case, revision: int, rows: dict) -> None:
    """Commits `rows` as a recompute run of the case's own day."""
    run_id = f"run-{case.name}-{revision}"
    now = format_time(time.time_ns() // 1000 * 1000)
    period = {"period_start": format_time(case.start), "period_end": format_time(case.end)}
    assert client.insert_rows_json(f"{stack.project}.{DATASET}.usage_recomputed", [
        {"subject": s, "meter": m, "dimensions": d,
         "window_start": format_time(case.start + h * HOUR),
         "window_end": format_time(case.start + (h + 1) * HOUR), "value": str(v),
         "event_count": 1, "fingerprint": f"fp-{s}-{m}-{h}", "revision": revision,
         "run_id": run_id, "recomputed_at": now, **period}
        for (s, m, d, h), v in rows.items()]) == []
    assert client.insert_rows_json(f"{stack.project}.{DATASET}.recompute_runs", [{
        "run_id": run_id, "revision": revision, "window_seconds": 3600, "started_at": now,
        "committed_at": now, **period}]) == []


@pytest.fixture(scope="module", params=list(CASES))
def case(request, stack, bq_client, tmp_path_factory):
    """A provider's local server, and a closed day of its own committed as revision 1."""
    case = CASES[request.param](SUBJECTS, METERS)
    mapping = tmp_path_factory.mktemp(case.name) / "mapping.yaml"
    mapping.write_text(json.dumps({case.name: {"customers": case.mapping.customers,
                                               "meters": case.mapping.meters}}))
    case.mapping_file = str(mapping)
    days_back = 2 + list(CASES).index(case.name)
    case.start, case.end = TODAY - days_back * DAY, TODAY - (days_back - 1) * DAY
    case.rows = usage(seed=18)
    commit_revision(bq_client, stack, case, 1, case.rows)
    yield case
    case.server.stop()


def command(stack, case, name, *extra):
    return [sys.executable, "-m", "tallyflow.cli", name,
            *(("--to",) if name == "export" else ("--provider",)), case.name,
            "--period-start", format_time(case.start), "--period-end", format_time(case.end),
            "--mapping", case.mapping_file, "--api-base", case.base,
            "--bigquery_dataset", DATASET, *extra]


def environment(stack, case) -> dict:
    return {**os.environ, **stack.env(), case.key_env: case.server.api_key}


def run(stack, case, name, *extra):
    return subprocess.run(command(stack, case, name, *extra), cwd=ROOT,
                          env=environment(stack, case), capture_output=True, text=True,
                          timeout=600)


def totals(rows: dict) -> dict:
    out = {}
    for (subject, meter, _, _), value in rows.items():
        out[(subject, meter)] = out.get((subject, meter), Decimal(0)) + value
    return out


def assert_provider_holds(case, rows):
    for (subject, meter), exact in totals(rows).items():
        assert case.held(subject, meter, case.start, case.end) == case.expected(exact), \
            (subject, meter)


def reconciliation(bq_client, stack, case):
    """{status: rows} of the case's latest reconciliation run."""
    result = bq_client.query(
        f"SELECT run_id, status, COUNT(*) AS n FROM `{stack.project}.{DATASET}."
        f"export_reconciliation` WHERE provider = '{case.name}' GROUP BY run_id, status "
        f"ORDER BY MAX(reconciled_at) DESC").result()
    rows = list(result)
    latest = rows[0]["run_id"]
    return {r["status"]: r["n"] for r in rows if r["run_id"] == latest}


def test_export_survives_a_kill_and_rate_limits_then_reconciles(stack, bq_client, case):
    case.server.hold_after(5)
    process = subprocess.Popen(command(stack, case, "export", "--concurrency", "3"), cwd=ROOT,
                               env=environment(stack, case), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        assert case.server.held.wait(timeout=300), process.communicate(timeout=5)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        case.server.release()
    # the provider applied six requests (Orb: maybe only open backfills) and the last
    # response never arrived

    case.server.inject(429, count=3, path=case.event_path, retry_after=1)
    case.server.inject(503, count=2, path=case.event_path)
    done = run(stack, case, "export")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resending" in done.stdout
    assert case.server.statuses(case.event_path).count(429) == 3
    assert_provider_holds(case, case.rows)

    checked = run(stack, case, "reconcile")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert reconciliation(bq_client, stack, case) == {"MATCH": len(totals(case.rows))}


def test_a_restatement_reaches_the_provider_and_reconciles(stack, bq_client, case):
    restated = dict(case.rows)
    keys = sorted(restated)
    for key in keys[::7]:
        restated[key] += Decimal("1.5")
    for key in keys[3::11]:
        restated[key] = max(Decimal(0), restated[key] - Decimal("0.75"))
    del restated[keys[1]]
    time.sleep(0.01)  # revision 2 commits after revision 1
    commit_revision(bq_client, stack, case, 2, restated)
    done = run(stack, case, "export")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_provider_holds(case, restated)
    checked = run(stack, case, "reconcile")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert reconciliation(bq_client, stack, case) == {"MATCH": len(totals(restated))}

    calls = len(case.server.calls)
    again = run(stack, case, "export")
    assert again.returncode == 0 and len(case.server.calls) == calls, again.stdout

    case.tamper()
    checked = run(stack, case, "reconcile")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "DIFFERENT" in checked.stdout
    assert reconciliation(bq_client, stack, case).get("DIFFERENT") == 1
