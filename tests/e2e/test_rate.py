"""Rating on the local stack: a recomputed period is rated, a price changes
retroactively, the period is re-rated as a new revision with exact per-line
credits and debits, and the first revision stays queryable.

Usage is loaded as a committed recompute run (and a stale streaming pane the
`usage` view must ignore). Every expected amount is worked out by hand below.
"""
import json
import os
import re
import subprocess
import sys
from decimal import Decimal as D

import pytest

from tests.conftest import EXAMPLE_METERS, ROOT

DATASET = "rate_test"
PERIOD = ("2026-11-01T00:00:00Z", "2026-11-01T04:00:00Z")
RUN = "recompute-rate-test"

PRICES = """
plans:
  - id: std
    currency: USD
    versions:
      - version: 1
        starting_at: 2026-01-01T00:00:00Z
{v1_end}        minimum: 5.00
        prices: &prices
          - id: requests
            meter: api_requests
            model: graduated
            tiers:
              - {{up_to: 10, unit_amount: 0.10, flat_amount: 1.00}}
              - {{up_to: null, unit_amount: 0.05}}
          - id: tokens
            meter: llm_input_tokens
            model: matrix
            dimensions: [model]
            cells:
              - {{values: {{model: large}}, model: per_unit, unit_amount: 0.000003}}
            default: {{model: per_unit, unit_amount: 0.000001}}
{v2}
assignments:
  - {{subject: acme, plan: std, starting_at: 2026-01-01T00:00:00Z}}
  - {{subject: globex, plan: std, starting_at: 2026-01-01T00:00:00Z}}
  - {{subject: initech, plan: std, starting_at: 2026-01-01T00:00:00Z}}
"""
# From 02:00, retroactively: requests cost twice as much.
V2 = """      - version: 2
        starting_at: 2026-11-01T02:00:00Z
        minimum: 5.00
        prices:
          - id: requests
            meter: api_requests
            model: graduated
            tiers:
              - {up_to: 10, unit_amount: 0.20, flat_amount: 1.00}
              - {up_to: null, unit_amount: 0.10}
          - id: tokens
            meter: llm_input_tokens
            model: matrix
            dimensions: [model]
            cells:
              - {values: {model: large}, model: per_unit, unit_amount: 0.000003}
            default: {model: per_unit, unit_amount: 0.000001}
"""

# (subject, meter, dimensions, hour, value)
USAGE = [
    ("acme", "api_requests", {"method": "GET"}, 0, "6"),
    ("acme", "api_requests", {"method": "GET"}, 1, "8"),
    ("acme", "api_requests", {"method": "POST"}, 1, "2"),
    ("acme", "api_requests", {"method": "GET"}, 3, "4"),
    ("acme", "llm_input_tokens", {"model": "large"}, 0, "1000000"),
    ("acme", "llm_input_tokens", {"model": "small"}, 1, "123456"),
    ("globex", "api_requests", {"method": "GET"}, 3, "3"),
]


@pytest.fixture(scope="module")
def client(stack):
    return stack.bigquery_client()


def table(stack, name: str) -> str:
    return f"{stack.project}.{DATASET}.{name}"


def hour(n: int) -> str:
    return f"2026-11-01T{n:02d}:00:00Z"


@pytest.fixture(scope="module")
def loaded(stack, client):
    """The period as a committed recompute, plus a stale pane the view must not use."""
    common = {"revision": 1, "run_id": RUN, "recomputed_at": "2026-11-02T00:00:00Z",
              "reason": "close", "period_start": PERIOD[0], "period_end": PERIOD[1]}
    rows = [{"subject": s, "meter": m, "dimensions": json.dumps(d, sort_keys=True),
             "window_start": hour(h), "window_end": hour(h + 1), "value": v,
             "event_count": int(v) if m == "api_requests" else 1, "fingerprint": f"fp{n}",
             **common} for n, (s, m, d, h, v) in enumerate(USAGE)]
    assert client.insert_rows_json(table(stack, "usage_recomputed"), rows) == []
    assert client.insert_rows_json(table(stack, "recompute_runs"), [{
        "run_id": RUN, "revision": 1, "period_start": PERIOD[0], "period_end": PERIOD[1],
        "window_seconds": 3600, "reason": "close", "started_at": "2026-11-02T00:00:00Z",
        "committed_at": "2026-11-02T00:00:00Z"}]) == []
    assert client.insert_rows_json(table(stack, "usage_panes"), [{
        "subject": "acme", "meter": "api_requests", "dimensions": '{"method":"GET"}',
        "window_start": hour(0), "window_end": hour(1), "value": "999", "event_count": 999,
        "fingerprint": "stale", "pane_timing": "ON_TIME", "pane_index": 0, "is_final": True,
        "emitted_at": hour(1), "row_id": "stale"}]) == []


def write_prices(tmp_path, retroactive: bool) -> str:
    path = tmp_path / ("prices-v2.yaml" if retroactive else "prices.yaml")
    path.write_text(PRICES.format(
        v1_end="        ending_before: 2026-11-01T02:00:00Z\n" if retroactive else "",
        v2=V2 if retroactive else ""))
    return str(path)


def rate(stack, prices: str, *extra) -> subprocess.CompletedProcess:
    env = {**os.environ, **stack.env()}
    return subprocess.run(
        [sys.executable, "-m", "tallyflow.cli", "rate", "--prices", prices,
         "--meters", str(EXAMPLE_METERS), "--bigquery_dataset", DATASET,
         "--period-start", PERIOD[0], "--period-end", PERIOD[1], *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def lines(client, stack, revision: int, line_type: str = "charge") -> dict:
    rows = client.query(
        f"SELECT * FROM `{table(stack, 'invoice_lines')}` "
        f"WHERE revision = {revision} AND line_type = '{line_type}'").result()
    return {(r["subject"], r["price_id"], r["plan_version"], r["dimensions"], r["kind"]):
            (r["quantity"], r["unrounded_amount"], r["amount"]) for r in rows}


def invoices(client, stack, revision: int) -> dict:
    rows = client.query(f"SELECT * FROM `{table(stack, 'invoices')}` "
                        f"WHERE revision = {revision}").result()
    return {r["subject"]: (r["total"], r["previous_total"], r["adjustment"]) for r in rows}


NULL_MODEL = '{"model": null}'
REVISION_1 = {
    # 6 + 8 + 2 + 4 = 20 requests: 10 x 0.10 + 1.00 flat + 10 x 0.05
    ("acme", "requests", 1, "{}", "usage"): (D(20), "2.5", D("2.50")),
    ("acme", "tokens", 1, '{"model": "large"}', "usage"): (D(1000000), "3", D("3.00")),
    ("acme", "tokens", 1, '{"model": "small"}', "usage"): (D(123456), "0.123456", D("0.12")),
    # 3 requests: 0.30 + 1.00 flat; no tokens; 5.00 minimum
    ("globex", "requests", 1, "{}", "usage"): (D(3), "1.3", D("1.30")),
    ("globex", "tokens", 1, NULL_MODEL, "usage"): (D(0), "0", D("0.00")),
    ("globex", None, 1, "{}", "minimum"): (None, "3.7", D("3.70")),
    # no usage: the first tier's flat fee, then the minimum
    ("initech", "requests", 1, "{}", "usage"): (D(0), "1", D("1.00")),
    ("initech", "tokens", 1, NULL_MODEL, "usage"): (D(0), "0", D("0.00")),
    ("initech", None, 1, "{}", "minimum"): (None, "4", D("4.00")),
}


def test_rate_then_rerate_after_a_retroactive_price_change(stack, client, loaded, tmp_path):
    first = rate(stack, write_prices(tmp_path, retroactive=False))
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["revision"] == 1 and summary["committed"]
    assert summary["total/USD"] == "15.62"
    assert lines(client, stack, 1) == REVISION_1
    assert invoices(client, stack, 1) == {"acme": (D("5.62"), None, None),
                                          "globex": (D("5.00"), None, None),
                                          "initech": (D("5.00"), None, None)}

    retroactive = write_prices(tmp_path, retroactive=True)
    preview = rate(stack, retroactive, "--diff")
    assert preview.returncode == 0, preview.stderr[-3000:]
    assert "revision 1 -> 2 (not written: --diff)" in preview.stdout
    assert "credit acme std v1 requests {} usage: 2.5 -> 2.3 (-0.2 USD)" in preview.stdout
    assert "debit  acme std v2 requests {} usage: - -> 0.4 (+0.4 USD)" in preview.stdout
    assert "invoice acme USD: 5.62 -> 5.82" in preview.stdout
    assert lines(client, stack, 2) == {}  # --diff writes nothing

    second = rate(stack, retroactive, "--reason", "requests repriced from 02:00")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["revision"] == 2
    changes = {key: amount for key, (_, _, amount) in
               {**lines(client, stack, 2, "debit"), **lines(client, stack, 2, "credit")}.items()}
    assert changes == {
        # acme: 16 requests before 02:00 stay at v1 (2.30), 4 after are tier 2 at v2's 0.10
        ("acme", "requests", 1, "{}", "usage"): D("-0.20"),
        ("acme", "requests", 2, "{}", "usage"): D("0.40"),
        # globex: its 3 requests are now v2's: 0.60 + 1.00; the minimum tops up less
        ("globex", "requests", 1, "{}", "usage"): D("-1.30"),
        ("globex", "requests", 2, "{}", "usage"): D("1.60"),
        ("globex", None, 1, "{}", "minimum"): D("-3.70"),
        ("globex", None, 2, "{}", "minimum"): D("3.40"),
        # initech: the same amounts, now under version 2 (the version in effect at the end)
        ("initech", "requests", 1, "{}", "usage"): D("-1.00"),
        ("initech", "requests", 2, "{}", "usage"): D("1.00"),
        ("initech", None, 1, "{}", "minimum"): D("-4.00"),
        ("initech", None, 2, "{}", "minimum"): D("4.00"),
    }
    assert invoices(client, stack, 2) == {"acme": (D("5.82"), D("5.62"), D("0.20")),
                                          "globex": (D("5.00"), D("5.00"), D("0.00")),
                                          "initech": (D("5.00"), D("5.00"), D("0.00"))}
    # the first revision is untouched and still queryable
    assert lines(client, stack, 1) == REVISION_1
    assert invoices(client, stack, 1)["acme"] == (D("5.62"), None, None)
    # per customer, the debits and credits add up to the invoice's adjustment exactly
    adjusted = client.query(
        f"SELECT subject, SUM(amount) AS net FROM `{table(stack, 'invoice_lines')}` "
        f"WHERE revision = 2 AND line_type != 'charge' GROUP BY subject").result()
    assert {r["subject"]: r["net"] for r in adjusted} == {
        "acme": D("0.20"), "globex": D("0.00"), "initech": D("0.00")}


def test_rate_refuses_bad_arguments_in_one_line(stack, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("plans: [{id: std, currency: XXX, versions: []}]\n")
    result = rate(stack, str(broken))
    assert result.returncode == 2
    assert "plans[0] (std).currency" in result.stderr


def statement(stack, subject: str, period=PERIOD, *extra) -> subprocess.CompletedProcess:
    env = {**os.environ, **stack.env()}
    return subprocess.run(
        [sys.executable, "-m", "tallyflow.cli", "statement", "--meters", str(EXAMPLE_METERS),
         "--bigquery_dataset", DATASET, "--subject", subject, "--period-start", period[0],
         "--period-end", period[1], *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def printed_charges(text: str) -> dict:
    """{item: 'amount currency'} from the Charges section, plus {('head', meter): ...} from
    each meter's heading."""
    found, section = {}, False
    for line in text.splitlines():
        heading = re.match(r"(\w+) \(.*  charge (.+)$", line)
        if heading:
            found[("head", heading[1])] = heading[2]
        if line.startswith("Charges ("):
            section = True
        elif section and not line.strip():
            section = False
        elif section and line.split()[0] != "item":
            item, amount = re.split(r"\s{2,}", line.strip())
            found[item] = amount
    return found


def test_statement_shows_the_latest_revision_of_the_rating(stack, client, loaded, tmp_path):
    latest = list(client.query(f"SELECT MAX(revision) AS r FROM "
                               f"`{table(stack, 'invoice_lines')}`").result())[0]["r"]
    if latest is None:  # run on its own: rate first (and again, to have debits and credits)
        assert rate(stack, write_prices(tmp_path, retroactive=False)).returncode == 0
        assert rate(stack, write_prices(tmp_path, retroactive=True)).returncode == 0
        latest = 2
    # the figures of the latest revision, from BigQuery: its charge lines and invoice
    per_meter = {(r["subject"], r["meter"]): r["amount"] for r in client.query(
        f"SELECT subject, meter, SUM(amount) AS amount FROM `{table(stack, 'invoice_lines')}` "
        f"WHERE revision = {latest} AND line_type = 'charge' GROUP BY subject, meter").result()}
    totals = {r["subject"]: r["total"] for r in client.query(
        f"SELECT subject, total FROM `{table(stack, 'invoices')}` "
        f"WHERE revision = {latest}").result()}
    # by hand (revision 2): requests 2.30 (v1) + 0.40 (v2); tokens 3.00 + 0.12
    assert per_meter[("acme", "api_requests")] == D("2.70")
    assert per_meter[("acme", "llm_input_tokens")] == D("3.12")
    assert totals["acme"] == D("5.82")

    page = tmp_path / "acme.html"
    result = statement(stack, "acme", PERIOD, "--html", str(page))
    assert result.returncode == 0, result.stderr[-3000:]
    charges = printed_charges(result.stdout)
    assert charges == {
        ("head", "api_requests"): "2.70 USD", "api_requests": "2.70 USD",
        ("head", "llm_input_tokens"): "3.12 USD", "llm_input_tokens": "3.12 USD",
        "invoice total": "5.82 USD"}
    for meter in ("api_requests", "llm_input_tokens"):
        assert D(charges[meter].split()[0]) == per_meter[("acme", meter)]
    assert D(charges["invoice total"].split()[0]) == totals["acme"]
    assert f"Charges (rating revision {latest}," in result.stdout
    assert "globex" not in result.stdout and "initech" not in result.stdout
    html = page.read_text()
    assert '<td class="charge" data-meter="api_requests">2.70 USD</td>' in html
    assert '<td class="charge" data-meter="llm_input_tokens">3.12 USD</td>' in html
    assert ('<tr data-item="invoice total"><td>invoice total</td>'
            '<td class="amount">5.82 USD</td></tr>') in html

    # globex: its plan minimum has no meter and is listed on its own; the lines add up
    result = statement(stack, "globex")
    assert result.returncode == 0, result.stderr[-3000:]
    charges = printed_charges(result.stdout)
    assert (charges["api_requests"], charges["plan minimum"], charges["invoice total"]) == (
        "1.60 USD", "3.40 USD", "5.00 USD")
    assert D(charges["api_requests"].split()[0]) == per_meter[("globex", "api_requests")]
    assert D(charges["plan minimum"].split()[0]) == per_meter[("globex", None)]
    assert D(charges["invoice total"].split()[0]) == totals["globex"]

    # a period that was not rated exactly: no money, said so
    result = statement(stack, "acme", (PERIOD[0], "2026-11-01T02:00:00Z"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Charges: not rated yet" in result.stdout
    assert "charge not rated yet" in result.stdout
