"""What is particular to Orb, against the local Orb server (tests/provider_servers/orb.py)
through the official `orb-billing` SDK: windows past the grace period and restated
windows go through backfills that replace the window's events; a rejected backfill
is reverted and leaves Orb as it was; a crash after a backfill closed records it
without a second one."""
import time
from datetime import datetime
from decimal import Decimal

import pytest

from tallyflow.export import orb
from tallyflow.export.engine import Context, export
from tallyflow.export.ledger import FAILED, latest
from tallyflow.export.retry import RetryPolicy
from tallyflow.export.usage import UsageRow
from tests.memory_ledger import Crash, MemoryLedger
from tests.provider_servers.cases import OrbCase

HOUR = 3600 * 1_000_000_000
NOW = time.time_ns()
END = NOW - NOW % HOUR - 24 * HOUR  # a day ago: past Orb's 12-hour grace period
START = END - 4 * HOUR
USAGE = {("acme", "calls", "{}", 0): "1.25", ("acme", "calls", "{}", 1): "0.5",
         ("acme", "tokens", '{"model":"m1"}', 1): "7", ("bolt", "calls", "{}", 2): "3.3"}


@pytest.fixture
def case():
    case = OrbCase(("acme", "bolt"), {"calls": "api_calls", "tokens": "llm_tokens"})
    case.provider = orb.build(case.server.api_key, case.base)
    yield case
    case.server.stop()


def run(case, values, ledger, revision=1):
    usage = [UsageRow(s, m, d, START + h * HOUR, START + (h + 1) * HOUR, Decimal(v), revision)
             for (s, m, d, h), v in values.items()]
    return export(case.provider, usage, ledger,
                  Context("run-test", time.time_ns(), START, END, case.mapping),
                  RetryPolicy(sleep=lambda s: None), concurrency=2, calls_per_second=0)


def orb_values(case) -> dict:
    """{(external customer, event name, hour of the period): value} of what Orb holds."""
    def hour(timestamp: str) -> int:
        seconds = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
        return (int(seconds) * 10 ** 9 - START) // HOUR

    return {(e["external_customer_id"], e["event_name"], hour(e["timestamp"])):
            Decimal(e["properties"]["value"]) for e in case.server.events.values()}


def test_late_windows_go_through_backfills_that_replace_them(case):
    ledger = MemoryLedger()
    assert run(case, USAGE, ledger).clean
    # one backfill per customer and window start, all reflected
    assert len(case.server.backfills) == 3
    assert {b["status"] for b in case.server.backfills.values()} == {"reflected"}
    assert orb_values(case) == {("ext-acme", "api_calls", 0): Decimal("1.25"),
                                ("ext-acme", "api_calls", 1): Decimal("0.5"),
                                ("ext-acme", "llm_tokens", 1): Decimal("7"),
                                ("ext-bolt", "api_calls", 2): Decimal("3.3")}
    restated = {**USAGE, ("acme", "calls", "{}", 1): "0.75"}
    del restated[("acme", "tokens", '{"model":"m1"}', 1)]
    assert run(case, restated, ledger, revision=2).clean
    assert len(case.server.backfills) == 4  # only acme's hour 1 again
    assert orb_values(case) == {("ext-acme", "api_calls", 0): Decimal("1.25"),
                                ("ext-acme", "api_calls", 1): Decimal("0.75"),
                                ("ext-bolt", "api_calls", 2): Decimal("3.3")}
    assert run(case, restated, ledger, revision=2).counts == {}


def test_a_rejected_backfill_is_reverted_and_orb_keeps_the_old_events(case):
    ledger = MemoryLedger()
    run(case, USAGE, ledger)
    before = dict(case.server.events)
    case.server.inject(400, count=1, path="/v1/ingest")
    restated = {**USAGE, ("bolt", "calls", "{}", 2): "4"}
    report = run(case, restated, ledger, revision=2)
    assert report.counts == {FAILED: 1}
    assert [b["status"] for b in case.server.backfills.values()][-1] == "reverted"
    assert case.server.events == before
    assert run(case, restated, ledger, revision=2).clean
    assert orb_values(case)[("ext-bolt", "api_calls", 2)] == Decimal("4")


def test_a_crash_after_a_backfill_closed_records_it_without_another(case):
    ledger = MemoryLedger()
    ledger.crash_on_write = 2  # the backfills' outcomes
    with pytest.raises(Crash):
        run(case, USAGE, ledger)
    backfills = dict(case.server.backfills)
    ledger.crash_on_write = None
    assert run(case, USAGE, ledger).clean
    assert case.server.backfills.keys() == backfills.keys()
    state = latest(ledger.rows)
    held = {e.window: e.quantity for e in state.values()
            if e.object_type == "event" and e.status == "sent"}
    assert sum(held.values()) == sum(Decimal(v) for v in USAGE.values())
