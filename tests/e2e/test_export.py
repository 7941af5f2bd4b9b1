"""`tallyflow export` and `tallyflow reconcile --provider` on the local stack, against
local provider servers (tests/provider_servers/) through the official SDKs.

A closed day of fractional usage (three customers, two meters, dimensions) is
committed as recompute revision 1. For each provider:
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
from tallyflow.export.quantise import round_once
from tests.conftest import ROOT
from tests.provider_servers.stripe import StripeServer

DATASET = "export_e2e"
NS, HOUR = 1_000_000_000, 3600 * 1_000_000_000
NOW = time.time_ns()
TODAY = NOW - NOW % (24 * HOUR)
START, END = TODAY - 2 * 24 * HOUR, TODAY - 24 * HOUR
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


def commit_revision(client, stack, revision: int, rows: dict) -> None:
    run_id = f"run-{revision}"
    now = format_time(time.time_ns() // 1000 * 1000)
    client.insert_rows_json(f"{stack.project}.{DATASET}.usage_recomputed", [
        {"subject": s, "meter": m, "dimensions": d, "window_start": format_time(START + h * HOUR),
         "window_end": format_time(START + (h + 1) * HOUR), "value": str(v),
         "event_count": 1, "fingerprint": f"fp-{s}-{m}-{h}", "revision": revision,
         "run_id": run_id, "recomputed_at": now, "period_start": format_time(START),
         "period_end": format_time(END)} for (s, m, d, h), v in rows.items()])
    assert client.insert_rows_json(f"{stack.project}.{DATASET}.recompute_runs", [{
        "run_id": run_id, "revision": revision, "period_start": format_time(START),
        "period_end": format_time(END), "window_seconds": 3600, "started_at": now,
        "committed_at": now}]) == []


class StripeCase:
    name, key_env = "stripe", "STRIPE_API_KEY"

    def __init__(self):
        from tallyflow.export.stripe import client

        self.server = StripeServer()
        self.base = self.server.start()
        sdk = client(self.server.api_key, self.base)
        for event_name in METERS.values():
            sdk.v1.billing.meters.create({"display_name": event_name, "event_name": event_name})
        self.customers = {s: sdk.v1.customers.create({}).id for s in SUBJECTS}
        self.event_path = "/v1/billing/meter_events"

    def held(self, subject, meter):
        return Decimal(self.server.total(METERS[meter], self.customers[subject], START // NS,
                                         END // NS))

    def expected(self, exact: Decimal) -> Decimal:
        return Decimal(round_once(exact))

    def tamper(self):
        """Cancel one live event behind tallyflow's back."""
        live = next(e for e in self.server.events.values() if not e["cancelled"])
        live["cancelled"] = True


CASES = {"stripe": StripeCase}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, stack, bq_client, tmp_path_factory):
    case = CASES[request.param]()
    mapping = tmp_path_factory.mktemp(case.name) / "mapping.yaml"
    mapping.write_text(json.dumps({case.name: {"customers": case.customers, "meters": METERS}}))
    case.mapping = str(mapping)
    yield case
    case.server.stop()


@pytest.fixture(scope="module")
def revision_one(stack, bq_client):
    rows = usage(seed=18)
    commit_revision(bq_client, stack, 1, rows)
    return rows


def command(stack, case, name, *extra):
    return [sys.executable, "-m", "tallyflow.cli", name,
            *(("--to",) if name == "export" else ("--provider",)), case.name,
            "--period-start", format_time(START), "--period-end", format_time(END),
            "--mapping", case.mapping, "--api-base", case.base,
            "--bigquery_dataset", DATASET, *extra]


def run(stack, case, name, *extra):
    env = {**os.environ, **stack.env(), case.key_env: case.server.api_key}
    return subprocess.run(command(stack, case, name, *extra), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def totals(rows: dict) -> dict:
    out = {}
    for (subject, meter, _, _), value in rows.items():
        out[(subject, meter)] = out.get((subject, meter), Decimal(0)) + value
    return out


def assert_provider_holds(case, rows):
    for (subject, meter), exact in totals(rows).items():
        assert case.held(subject, meter) == case.expected(exact), (subject, meter)


def reconciliation(bq_client, stack, case):
    result = bq_client.query(
        f"SELECT run_id, status, COUNT(*) AS n FROM `{stack.project}.{DATASET}."
        f"export_reconciliation` WHERE provider = '{case.name}' GROUP BY run_id, status "
        f"ORDER BY MAX(reconciled_at) DESC").result()
    rows = list(result)
    latest = rows[0]["run_id"]
    return {r["status"]: r["n"] for r in rows if r["run_id"] == latest}


def test_export_survives_a_kill_and_rate_limits_then_reconciles(stack, bq_client, case,
                                                                  revision_one):
    env = {**os.environ, **stack.env(), case.key_env: case.server.api_key}
    case.server.hold_after(5)
    process = subprocess.Popen(command(stack, case, "export", "--concurrency", "3"), cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert case.server.held.wait(timeout=300), process.communicate(timeout=5)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        case.server.release()
    accepted_before = dict(getattr(case.server, "events"))
    assert accepted_before

    case.server.inject(429, count=3, path=case.event_path, retry_after=1)
    case.server.inject(503, count=2, path=case.event_path)
    done = run(stack, case, "export")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resending" in done.stdout
    assert case.server.statuses(case.event_path).count(429) == 3
    assert_provider_holds(case, revision_one)

    checked = run(stack, case, "reconcile")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert reconciliation(bq_client, stack, case) == {"MATCH": len(totals(revision_one))}


def test_a_restatement_reaches_the_provider_and_reconciles(stack, bq_client, case,
                                                           revision_one):
    restated = dict(revision_one)
    keys = sorted(restated)
    for key in keys[::7]:
        restated[key] += Decimal("1.5")
    for key in keys[3::11]:
        restated[key] = max(Decimal(0), restated[key] - Decimal("0.75"))
    del restated[keys[1]]
    time.sleep(0.01)  # revision 2 commits after revision 1
    commit_revision(bq_client, stack, 2, restated)
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
