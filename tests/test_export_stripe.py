"""Export to Stripe Billing Meters against the local Stripe server
(tests/provider_servers/stripe.py), through the official `stripe` SDK, with the
ledger in memory: what is particular to Stripe (the guarantees every provider
shares are in test_export_providers.py). Expected totals are the exact usage
rounded once, computed here from the rows, never read back from the exporter."""
import time
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tallyflow.export import stripe as stripe_export
from tallyflow.export.engine import Context, export
from tallyflow.export.ledger import FAILED, SENT, latest
from tallyflow.export.mapping import Mapping
from tallyflow.export.quantise import round_once
from tallyflow.export.retry import RetryPolicy
from tallyflow.export.usage import UsageRow
from tests.memory_ledger import MemoryLedger
from tests.provider_servers.stripe import StripeServer

NS, HOUR = 1_000_000_000, 3600 * 1_000_000_000
NOW = time.time_ns()
START = NOW - NOW % HOUR - 48 * HOUR  # a closed two-day period in the last 35 days
END = START + 24 * HOUR


@pytest.fixture
def server():
    server = StripeServer()
    base = server.start()
    server.client = stripe_export.client(server.api_key, base)
    server.client.v1.billing.meters.create({"display_name": "API calls",
                                            "event_name": "api_calls"})
    yield server
    server.stop()


def customers(server, *subjects):
    return Mapping(customers={s: server.client.v1.customers.create({}).id for s in subjects},
                   meters={"calls": "api_calls"})


def rows(values: dict, revision=1, meter="calls"):
    """{(subject, hour, dims): value} -> usage rows."""
    return [UsageRow(subject, meter, dims, START + hour * HOUR, START + (hour + 1) * HOUR,
                     Decimal(value), revision) for (subject, hour, dims), value in values.items()]


def run(server, usage, ledger, mapping, now=None, policy=None):
    context = Context("run-test", now or time.time_ns(), START, END, mapping)
    return export(stripe_export.Stripe(server.client), usage, ledger, context,
                  policy or RetryPolicy(sleep=lambda s: None), concurrency=4,
                  calls_per_second=0)


def held(server, mapping, subject):
    return server.total("api_calls", mapping.customer(subject), START // NS, END // NS)


def expected(values, subject):
    return round_once(sum((Decimal(v) for (s, _, _), v in values.items() if s == subject),
                          Decimal(0)))


VALUES = {("acme", 0, "{}"): "0.4", ("acme", 1, "{}"): "0.4", ("acme", 2, "{}"): "0.4",
          ("acme", 3, '{"region":"eu"}'): "2.5", ("acme", 3, '{"region":"us"}'): "7.25",
          ("bolt", 0, "{}"): "12.5", ("bolt", 5, "{}"): "0.5", ("bolt", 9, "{}"): "3"}


def test_a_period_reaches_stripe_rounded_once_and_a_rerun_sends_nothing(server):
    mapping, ledger = customers(server, "acme", "bolt"), MemoryLedger()
    report = run(server, rows(VALUES), ledger, mapping)
    assert report.clean
    for subject in ("acme", "bolt"):
        assert held(server, mapping, subject) == expected(VALUES, subject)
    # acme: 0.4+0.4+0.4+2.5+7.25 = 10.95 -> 11, not 0+0+0+3+7 = 10 (per-window rounding)
    assert held(server, mapping, "acme") == 11
    state = latest(ledger.rows)
    sent = [e for e in state.values() if e.status == SENT]
    assert {e.window for e in sent} <= {r.window for r in rows(VALUES)}
    assert all(abs(e.remainder) <= Decimal("0.5") for e in sent)
    calls = len(server.calls)
    again = run(server, rows(VALUES), ledger, mapping)
    assert again.counts == {} and len(server.calls) == calls


def test_a_restatement_within_24_hours_cancels_and_resends(server):
    mapping, ledger = customers(server, "acme", "bolt"), MemoryLedger()
    run(server, rows(VALUES), ledger, mapping)
    restated = dict(VALUES)
    restated[("acme", 0, "{}")] = "1.4"  # moves acme's running total: later windows shift
    restated[("acme", 3, '{"region":"eu"}')] = "3.5"  # a sent window: 3 units become 4
    del restated[("bolt", 9, "{}")]  # a window whose usage is gone
    report = run(server, rows(restated, revision=2), ledger, mapping)
    assert report.clean
    cancelled = {a["cancel"]["identifier"] for a in server.adjustments}
    assert len(cancelled) == 2 and all(server.events[i]["cancelled"] for i in cancelled)
    for subject in ("acme", "bolt"):
        assert held(server, mapping, subject) == expected(restated, subject)
    assert run(server, rows(restated, revision=2), ledger, mapping).counts == {}


def test_after_24_hours_an_increase_adds_an_event_and_a_decrease_asks_for_a_credit_note(server):
    mapping, ledger = customers(server, "acme", "bolt"), MemoryLedger()
    run(server, rows(VALUES), ledger, mapping)
    server.clock_offset = 25 * 3600
    later = time.time_ns() + 25 * 3600 * NS
    restated = dict(VALUES)
    restated[("bolt", 9, "{}")] = "10"  # +7
    restated[("acme", 3, '{"region":"us"}')] = "1"  # -6.25
    report = run(server, rows(restated, revision=2), ledger, mapping, now=later)
    assert not server.adjustments
    assert held(server, mapping, "bolt") == expected(restated, "bolt")
    failed = [e for e in latest(ledger.rows).values() if e.status == FAILED]
    assert [e.subject for e in failed] == ["acme"] and "credit note" in failed[0].response
    assert report.counts[FAILED] == 1


def test_a_window_older_than_35_days_fails_without_a_call(server):
    mapping, ledger = customers(server, "acme"), MemoryLedger()
    report = run(server, rows({("acme", 0, "{}"): "5"}), ledger, mapping,
                 now=START + 36 * 24 * HOUR)
    assert report.counts == {FAILED: 1}
    assert not any(path.startswith("/v1/billing/meter_events") for _, path, _ in server.calls)


small = st.decimals(min_value=0, max_value=50, places=3)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.lists(small, min_size=1, max_size=8),
       changes=st.dictionaries(st.integers(0, 7), small, max_size=4))
def test_any_restatement_ends_with_the_exact_total_rounded_once(server, first, changes):
    mapping, ledger = customers(server, "acme"), MemoryLedger()
    values = {("acme", hour, "{}"): str(v) for hour, v in enumerate(first)}
    run(server, rows(values), ledger, mapping)
    assert held(server, mapping, "acme") == expected(values, "acme")
    values.update({("acme", hour, "{}"): str(v) for hour, v in changes.items()})
    assert run(server, rows(values, revision=2), ledger, mapping).clean
    assert held(server, mapping, "acme") == expected(values, "acme")
