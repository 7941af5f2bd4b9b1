"""Whole-number quantisation (Stripe) and the exporter's retry policy, alone."""
import math
import random
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tallyflow.export.quantise import quantise, round_once
from tallyflow.export.retry import Failure, ProviderUnavailable, RetryPolicy, retry_after_seconds

exact = st.decimals(min_value=Decimal("-1000"), max_value=Decimal("100000"), places=9,
                    allow_nan=False, allow_infinity=False)
usage = st.decimals(min_value=Decimal("0"), max_value=Decimal("100000"), places=9,
                    allow_nan=False, allow_infinity=False)


def half_up(total: Decimal) -> int:
    """Rounded half away from zero, by floor: an independent statement of the rule."""
    magnitude = math.floor(abs(total) + Decimal("0.5"))
    return magnitude if total >= 0 else -magnitude


@given(st.lists(exact, max_size=60))
def test_sum_sent_is_the_exact_total_rounded_once(values):
    sent = quantise(values)
    assert sum(q.quantity for q in sent) == half_up(sum(values, Decimal(0)))


@given(st.lists(exact, min_size=1, max_size=60))
def test_each_remainder_is_what_the_running_total_still_owes(values):
    running, sent = Decimal(0), 0
    for value, q in zip(values, quantise(values)):
        running += value
        sent += q.quantity
        assert q.remainder == running - sent
        assert abs(q.remainder) <= Decimal("0.5")


@given(st.lists(usage, max_size=60))
def test_usage_never_sends_a_negative_quantity(values):
    assert all(q.quantity >= 0 for q in quantise(values))


def test_the_rule_on_a_worked_example():
    # 0.4 + 0.4 + 0.4 = 1.2: per-window rounding would send 0; the running total sends 1
    assert [tuple(q) for q in quantise([Decimal("0.4")] * 3)] == [
        (0, Decimal("0.4")), (1, Decimal("-0.2")), (0, Decimal("0.2"))]
    assert round_once(Decimal("2.5")) == 3 and round_once(Decimal("-2.5")) == -3


def policy(sleeps):
    return RetryPolicy(max_attempts=4, first_backoff=0.5, max_backoff=4, sleep=sleeps.append,
                       rng=random.Random(7))


def failing(*failures):
    """A request failing with each of `failures` in turn (an exception carrying it), then
    succeeding."""
    pending = list(failures)

    def request():
        if pending:
            raise _Raised(pending.pop(0))
        return "done"
    return request


class _Raised(Exception):
    def __init__(self, failure):
        self.failure = failure


def classify(error):
    return error.failure if isinstance(error, _Raised) else None


def test_429_waits_at_least_retry_after_then_succeeds():
    sleeps = []
    outcome = policy(sleeps).call("p", failing(Failure(True, 429, "slow down", 3.0),
                                               Failure(True, 503, "busy")), classify)
    assert outcome.response == "done" and outcome.attempts == 3
    assert sleeps[0] >= 3.0 and 0 <= sleeps[1] <= 1.0  # second wait: jitter within 2 x 0.5


def test_4xx_is_a_rejection_without_retry():
    sleeps = []
    outcome = policy(sleeps).call("p", failing(Failure(False, 400, "bad value")), classify)
    assert outcome.response is None and outcome.rejection.status == 400
    assert outcome.attempts == 1 and sleeps == []


def test_transient_failures_past_the_budget_stop_the_run():
    sleeps = []
    with pytest.raises(ProviderUnavailable, match="after 4 attempts"):
        policy(sleeps).call("p", failing(*[Failure(True, 500, "down")] * 4), classify)
    assert len(sleeps) == 3
    assert all(0 <= s <= min(4, 0.5 * 2 ** i) for i, s in enumerate(sleeps))


def test_other_exceptions_are_not_swallowed():
    def broken():
        raise KeyError("bug")
    with pytest.raises(KeyError):
        policy([]).call("p", broken, classify)


def test_retry_after_header():
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds(None) is None
