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
from tallyflow.export.ledger import FAILED, PENDING, SENT, latest
from tallyflow.export.mapping import Mapping
from tallyflow.export.quantise import round_once
from tallyflow.export.retry import RetryPolicy
from tallyflow.export.usage import UsageRow
from schemas.values import format_time
from tallyflow.export.reconcile import MATCH, compare
from tests.memory_ledger import Crash, MemoryLedger
from tests.provider_servers.stripe import STREAM, StripeServer

NS, HOUR = 1_000_000_000, 3600 * 1_000_000_000
NOW = time.time_ns()
START = NOW - NOW % HOUR - 48 * HOUR  # a closed two-day period in the last 35 days
END = START + 24 * HOUR


@pytest.fixture
def server():
    server = StripeServer()
    base = server.start()
    server.client, server.base = stripe_export.client(server.api_key, base), base
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


def run(server, usage, ledger, mapping, now=None, policy=None, api="auto", concurrency=4):
    context = Context("run-test", now or time.time_ns(), START, END, mapping)
    return export(stripe_export.Stripe(server.client, api, server.base), usage, ledger, context,
                  policy or RetryPolicy(sleep=lambda s: None), concurrency=concurrency,
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


# ---------------------------------------------------------------- v2 meter event streams
# The local server follows Stripe's v2 reference for the session and the stream
# (tests/provider_servers/stripe.py): 15-minute tokens, 1 to 100 events a call,
# asynchronous validation, identifiers deduplicated.


def whole(subjects, dims_count):
    """Whole-number usage (so every window is one event of its own value): subjects x
    24 hours x `dims_count` dimensions, values 1..9."""
    return {(subject, hour, f'{{"d":"{d}"}}'): str(1 + (hour + d) % 9)
            for subject in subjects for hour in range(24) for d in range(dims_count)}


def v1_posts(server):
    return [c for c in server.calls if c[:2] == ("POST", "/v1/billing/meter_events")]


def test_auto_takes_v1_below_the_volume(server):
    mapping = customers(server, "acme", "bolt")
    assert run(server, rows(VALUES), MemoryLedger(), mapping).clean
    assert server.stream_batches == [] and v1_posts(server)


def test_auto_streams_from_the_volume_in_calls_of_100_and_reconciles(server):
    mapping, ledger = customers(server, "acme", "bolt"), MemoryLedger()
    values = whole(("acme", "bolt"), 21)  # 2 x 24 x 21 = 1,008 events
    assert len(values) >= stripe_export.STREAM_FROM
    assert run(server, rows(values), ledger, mapping).clean
    assert v1_posts(server) == []
    assert sum(server.stream_batches) == len(values)
    assert max(server.stream_batches) <= 100 and len(server.stream_batches) == 11
    for subject in ("acme", "bolt"):
        assert held(server, mapping, subject) == expected(values, subject)
    state = latest(ledger.rows)
    assert {(e.object_type, e.status) for e in state.values()} == {(stripe_export.STREAM, SENT)}
    assert run(server, rows(values), ledger, mapping).counts == {}
    results = compare(stripe_export.Stripe(server.client), rows(values), state,
                      Context("r", time.time_ns(), START, END, mapping),
                      RetryPolicy(sleep=lambda s: None))
    assert {r["status"] for r in results} == {MATCH} and len(results) == 2


def test_both_apis_send_the_same_events_under_the_same_identifiers(server):
    mapping = customers(server, "acme", "bolt")
    context = Context("plan", time.time_ns(), START, END, mapping)
    v1 = stripe_export.Stripe(server.client, "v1").plan(rows(VALUES), {}, context)
    v2 = stripe_export.Stripe(server.client, "v2").plan(rows(VALUES), {}, context)
    assert [(e.idempotency_key, e.quantity, e.remainder) for e in v1] == \
        [(e.idempotency_key, e.quantity, e.remainder) for e in v2]
    for a, b in zip(v1, v2):
        assert b.body() == {**a.body(), "timestamp": format_time(a.body()["timestamp"] * NS)}


@pytest.mark.parametrize("expiry,concurrency", [("stripe says so", 1),
                                               ("the client sees it coming", 1),
                                               ("stripe says so", 4)])
def test_a_session_expiring_mid_export_is_renewed(server, expiry, concurrency):
    mapping, ledger = customers(server, "acme"), MemoryLedger()
    if expiry == "stripe says so":
        server.calls_per_session = 1  # each token expires after one stream call
    else:
        server.session_seconds = stripe_export.SESSION_MARGIN_SECONDS - 1
    values = whole(("acme",), 11)  # 264 events: three stream calls
    assert run(server, rows(values), ledger, mapping, api="v2", concurrency=concurrency).clean
    assert held(server, mapping, "acme") == expected(values, "acme")
    assert sorted(server.stream_batches) == [64, 100, 100]
    assert {e.status for e in latest(ledger.rows).values()} == {SENT}
    assert not any(token in repr(ledger.rows) for token in server.sessions)
    if concurrency == 1:  # in order: each call after the first meets an expired token
        assert len(server.sessions) == 3
        assert server.statuses(STREAM).count(401) == (2 if expiry == "stripe says so" else 0)


def test_a_crashed_stream_export_is_resent_on_the_stream_and_counted_once(server):
    mapping, ledger = customers(server, "acme", "bolt"), MemoryLedger()
    ledger.crash_on_write = 2  # the stream took the events; their outcomes are lost
    with pytest.raises(Crash):
        run(server, rows(VALUES), ledger, mapping, api="v2")
    streamed = dict(server.events)
    assert streamed and {e.status for e in ledger.rows} == {PENDING}
    ledger.crash_on_write = None
    report = run(server, rows(VALUES), ledger, mapping, api="v1")  # v1 now: resends keep v2
    assert report.clean and report.resumed == len(ledger.rows) // 2
    assert server.events.keys() == streamed.keys() and v1_posts(server) == []
    for subject in ("acme", "bolt"):
        assert held(server, mapping, subject) == expected(VALUES, subject)


def test_the_stream_follows_the_reference(server):
    import stripe as sdk

    mapping = customers(server, "acme")
    session = server.client.v2.billing.meter_event_session.create()
    stream = stripe_export.client(session.authentication_token, server.base, "meter_events")

    def event(i, customer=mapping.customer("acme")):
        return {"event_name": "api_calls", "identifier": f"ev-{i}",
                "timestamp": format_time(START), "payload": {"stripe_customer_id": customer,
                                                             "value": "2"}}

    with pytest.raises(sdk.InvalidRequestError):  # at most 100 events a call
        stream.v2.billing.meter_event_stream.create({"events": [event(i) for i in range(101)]})
    with_api_key = stripe_export.client(server.api_key, server.base, "meter_events")
    with pytest.raises(sdk.AuthenticationError):  # the stream takes a session token only
        with_api_key.v2.billing.meter_event_stream.create({"events": [event(0)]})
    # asynchronous validation: a bad event is accepted, dropped and reported
    stream.v2.billing.meter_event_stream.create(
        {"events": [event(1), event(1), event(2, "cus_nobody")]})
    assert held(server, mapping, "acme") == 2  # ev-1 once, ev-2 dropped
    assert [r["identifier"] for r in server.error_reports] == ["ev-2"]
    server.clock_offset = 15 * 60
    with pytest.raises(sdk.TemporarySessionExpiredError):
        stream.v2.billing.meter_event_stream.create({"events": [event(3)]})
