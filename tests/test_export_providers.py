"""The export's guarantees, for every provider, against its local server
(tests/provider_servers/) through the official SDK, with the ledger in memory:
the provider ends with exactly tallyflow's totals (Stripe: rounded once, on its v1
meter events and on its v2 meter event stream alike) after
a first export, injected 429s and 5xx, a crash between sending and recording,
a restatement, and a rerun sends nothing. Expected totals are computed here
from the usage rows."""
import time
from decimal import Decimal

import pytest

from tallyflow.export.command import provider_module
from tallyflow.export.engine import Context, export
from tallyflow.export.ledger import FAILED, PENDING, latest
from tallyflow.export.mapping import Mapping
from tallyflow.export.reconcile import DIFFERENT, MATCH, compare
from tallyflow.export.retry import RetryPolicy
from tallyflow.export.usage import UsageRow
from tests.memory_ledger import Crash, MemoryLedger
from tests.provider_servers.cases import API_CASES

HOUR = 3600 * 1_000_000_000
NOW = time.time_ns()
END = NOW - NOW % HOUR  # six closed hours: within Orb's grace period
START = END - 6 * HOUR
METERS = {"calls": "api_calls", "tokens": "llm_tokens"}
USAGE = {("acme", "calls", "{}", 0): "0.4", ("acme", "calls", "{}", 1): "0.4",
         ("acme", "calls", "{}", 2): "0.4", ("acme", "tokens", '{"model":"m1"}', 3): "2.5",
         ("acme", "tokens", '{"model":"m2"}', 3): "7.25", ("bolt", "calls", "{}", 0): "12.5",
         ("bolt", "calls", "{}", 4): "0.5", ("bolt", "tokens", "{}", 5): "3.001"}


@pytest.fixture(params=list(API_CASES))
def case(request):
    case = API_CASES[request.param](("acme", "bolt"), METERS)
    case.provider = provider_module(case.name).build(case.server.api_key, case.base,
                                                     **case.options)
    yield case
    case.server.stop()


def rows(values: dict, revision=1):
    return [UsageRow(s, m, d, START + h * HOUR, START + (h + 1) * HOUR, Decimal(v), revision)
            for (s, m, d, h), v in values.items()]


def context(case, mapping=None, now=None):
    return Context("run-test", now or time.time_ns(), START, END, mapping or case.mapping)


def run(case, values, ledger, revision=1, mapping=None, sleeps=None, concurrency=4):
    policy = RetryPolicy(sleep=(sleeps.append if sleeps is not None else lambda s: None))
    return export(case.provider, rows(values, revision), ledger, context(case, mapping),
                  policy, concurrency=concurrency, calls_per_second=0)


def assert_holds(case, values):
    totals = {}
    for (subject, meter, _, _), value in values.items():
        totals[(subject, meter)] = totals.get((subject, meter), Decimal(0)) + Decimal(value)
    for (subject, meter), exact in totals.items():
        assert case.held(subject, meter, START, END) == case.expected(exact), (subject, meter)


def reconciled(case, values, ledger):
    results = compare(case.provider, rows(values), latest(ledger.rows), context(case),
                      RetryPolicy(sleep=lambda s: None))
    return {(r["subject"], r["meter"]): r["status"] for r in results}


def test_export_then_rerun_sends_nothing_and_reconciles(case):
    ledger = MemoryLedger()
    assert run(case, USAGE, ledger).clean
    assert_holds(case, USAGE)
    calls = len(case.server.calls)
    assert run(case, USAGE, ledger).counts == {} and len(case.server.calls) == calls
    assert set(reconciled(case, USAGE, ledger).values()) == {MATCH}
    case.tamper()
    assert DIFFERENT in reconciled(case, USAGE, ledger).values()


def test_429_and_5xx_are_retried(case):
    ledger, sleeps = MemoryLedger(), []
    # five in a row (one series at a time): more than Lago's SDK absorbs itself (three
    # retries), so every provider's calls reach the one policy
    case.server.inject(429, count=5, path=case.event_path, retry_after=1)
    case.server.inject(500, count=2, path=case.event_path)
    assert run(case, USAGE, ledger, sleeps=sleeps, concurrency=1).clean
    assert case.server.statuses(case.event_path).count(429) == 5
    assert case.server.statuses(case.event_path).count(500) == 2
    assert any(s >= 1.0 for s in sleeps)  # Retry-After (Lago: x-ratelimit-reset) honoured
    assert_holds(case, USAGE)


def test_a_crash_between_sending_and_recording_sends_nothing_twice(case):
    ledger = MemoryLedger()
    ledger.crash_on_write = 2  # 1: the requests, pending; 2: their outcomes
    with pytest.raises(Crash):
        run(case, USAGE, ledger)
    assert ledger.rows and {e.status for e in ledger.rows} == {PENDING}
    held_before = dict(case.server.events)
    ledger.crash_on_write = None
    report = run(case, USAGE, ledger)
    assert report.clean and report.resumed == len(ledger.rows) // 2
    assert case.server.events.keys() == held_before.keys()
    assert_holds(case, USAGE)


def test_a_restatement_is_corrected(case):
    ledger = MemoryLedger()
    run(case, USAGE, ledger)
    restated = dict(USAGE)
    restated[("acme", "calls", "{}", 0)] = "1.4"
    restated[("acme", "tokens", '{"model":"m1"}', 3)] = "0.125"
    del restated[("bolt", "calls", "{}", 4)]
    restated[("bolt", "tokens", "{}", 2)] = "9"  # a new window
    assert run(case, restated, ledger, revision=2).clean
    assert_holds(case, restated)
    assert run(case, restated, ledger, revision=2).counts == {}
    assert set(reconciled(case, restated, ledger).values()) == {MATCH}


def test_a_rejected_request_fails_alone(case):
    ledger = MemoryLedger()
    broken = Mapping({**case.mapping.customers, "bolt": "no-such-customer"}, METERS)
    if case.name == "orb":  # Orb accepts any external customer id: break the meter instead
        broken = Mapping(case.mapping.customers, {**METERS, "tokens": ""})
    report = run(case, USAGE, ledger, mapping=broken)
    assert not report.clean and report.counts[FAILED] >= 1
    failed = [e for e in latest(ledger.rows).values() if e.status == FAILED]
    assert failed and all(e.response for e in failed)
    sent = {(e.subject, e.meter) for e in latest(ledger.rows).values() if e.status == "sent"}
    assert sent  # the other series went on
    assert run(case, USAGE, ledger).clean
    assert_holds(case, USAGE)
