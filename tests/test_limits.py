"""Limits files, billing periods and threshold crossings (schemas/limits.py), as pure functions."""
import datetime as dt
from decimal import Decimal

import pytest
import yaml

from schemas.catalog import load_catalog
from schemas.limits import (Level, LimitsError, alert_id, apply_change, billing_period,
                            newly_crossed, parse_limits, parse_limits_text, period_value,
                            window_change)
from schemas.pricing import load_price_book
from tallyflow.examples import LIMITS, METERS, PRICES

CATALOG = load_catalog(str(METERS))
PRICE_BOOK = load_price_book(str(PRICES))


def ns(text: str) -> int:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(moment.timestamp()) * 10 ** 9


def limits(document):
    return parse_limits(document, CATALOG, PRICE_BOOK)


def test_the_example_limits_file_loads_and_resolves_percentages_of_included_quantities():
    book = parse_limits_text(LIMITS.read_text(), CATALOG, PRICE_BOOK, str(LIMITS))
    at = ns("2026-11-20T00:00:00Z")
    # cust-002 is on developer (1000 free requests), cust-000 on pro (included: 10000)
    assert book.levels(PRICE_BOOK, "cust-002", "api_requests", at) == (
        Level("50%", Decimal(500)), Level("80%", Decimal(800)), Level("100%", Decimal(1000)))
    assert book.levels(PRICE_BOOK, "cust-000", "api_requests", at) == (
        Level("80%", Decimal(8000)), Level("100%", Decimal(10000)),
        Level("500000", Decimal(500000)))
    assert book.period(PRICE_BOOK, "cust-002", at) == (ns("2026-11-15T00:00:00Z"),
                                                       ns("2026-12-15T00:00:00Z"))


def test_percent_thresholds_are_of_the_included_quantity_and_sorted_by_quantity():
    book = limits({"limits": [{"plan": "developer", "meter": "api_requests",
                               "thresholds": ["100%", 600, "50%", "12.5%"]}]})
    subject = next(a.subject for a in PRICE_BOOK.assignments if a.plan == "developer")
    at = next(a.starting_at for a in PRICE_BOOK.assignments if a.subject == subject)
    assert book.levels(PRICE_BOOK, subject, "api_requests", at) == (
        Level("12.5%", Decimal(125)), Level("50%", Decimal(500)), Level("600", Decimal(600)),
        Level("100%", Decimal(1000)))


def test_a_customers_own_entry_replaces_its_plans():
    assignment = next(a for a in PRICE_BOOK.assignments if a.plan == "developer")
    book = limits({"limits": [
        {"plan": "developer", "meter": "api_requests", "thresholds": ["50%"]},
        {"subject": assignment.subject, "meter": "api_requests", "included": 40,
         "thresholds": ["50%", 30]}]})
    assert book.levels(PRICE_BOOK, assignment.subject, "api_requests",
                       assignment.starting_at) == (Level("50%", Decimal(20)),
                                                   Level("30", Decimal(30)))
    assert book.levels(PRICE_BOOK, "nobody-on-a-plan", "api_requests",
                       assignment.starting_at) == ()


@pytest.mark.parametrize("instant, anchor, start, end", [
    ("2026-11-30T23:59:59Z", None, "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
    ("2026-12-01T00:00:00Z", None, "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    ("2026-12-31T12:00:00Z", None, "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    ("2026-11-14T23:59:59Z", 15, "2026-10-15T00:00:00Z", "2026-11-15T00:00:00Z"),
    ("2026-11-15T00:00:00Z", 15, "2026-11-15T00:00:00Z", "2026-12-15T00:00:00Z"),
    ("2027-01-10T00:00:00Z", 15, "2026-12-15T00:00:00Z", "2027-01-15T00:00:00Z"),
    # day 31: the last day of shorter months (February 2027 has 28)
    ("2027-02-28T00:00:00Z", 31, "2027-02-28T00:00:00Z", "2027-03-31T00:00:00Z"),
    ("2027-02-27T23:00:00Z", 31, "2027-01-31T00:00:00Z", "2027-02-28T00:00:00Z"),
    ("2028-02-29T06:00:00Z", 30, "2028-02-29T00:00:00Z", "2028-03-30T00:00:00Z"),
])
def test_billing_periods(instant, anchor, start, end):
    assert billing_period(ns(instant), anchor) == (ns(start), ns(end))


def test_anchor_day_of_a_customer_wins_over_its_plans():
    assignment = next(a for a in PRICE_BOOK.assignments if a.plan == "developer")
    book = limits({"limits": [{"plan": "developer", "meter": "api_requests",
                               "thresholds": [1]}],
                   "billing_periods": [{"plan": "developer", "anchor_day": 10},
                                       {"subject": assignment.subject, "anchor_day": 20}]})
    other = next((a for a in PRICE_BOOK.assignments
                  if a.plan == "developer" and a.subject != assignment.subject), None)
    at = ns("2026-11-25T00:00:00Z")
    assert book.period(PRICE_BOOK, assignment.subject, at) == (ns("2026-11-20T00:00:00Z"),
                                                                ns("2026-12-20T00:00:00Z"))
    if other is not None:
        assert book.period(PRICE_BOOK, other.subject, at)[0] == ns("2026-11-10T00:00:00Z")
    assert book.period(PRICE_BOOK, "not-assigned", at)[0] == ns("2026-11-01T00:00:00Z")


def test_a_jump_crosses_every_threshold_it_passes_in_order_and_never_twice():
    levels = (Level("50%", Decimal(50)), Level("80%", Decimal(80)), Level("100%", Decimal(100)))
    assert newly_crossed(levels, Decimal("49.999"), set()) == []
    assert newly_crossed(levels, Decimal(85), set()) == list(levels[:2])
    assert newly_crossed(levels, Decimal(100), {"50%", "80%"}) == [levels[2]]
    assert newly_crossed(levels, Decimal(500), {"50%", "80%", "100%"}) == []


def test_period_values_sum_additive_meters_and_take_the_highest_window_of_max():
    windows = [Decimal("0.1"), Decimal("0.2"), Decimal("-0.05")]
    assert period_value("SUM", windows) == Decimal("0.25")
    assert period_value("COUNT", [Decimal(3), Decimal(4)]) == 7
    assert period_value("MAX", windows) == Decimal("0.2")
    assert period_value("SUM", []) == 0


@pytest.mark.parametrize("aggregation", ["SUM", "MAX"])
def test_window_changes_in_any_order_give_the_period_value_of_the_latest_panes(aggregation):
    # window -> its panes' values, in order (accumulating: a later pane replaces)
    panes = {"w1": [Decimal("1.5"), Decimal("4")], "w2": [Decimal("0.25")],
             "w3": [Decimal(2), Decimal(2), Decimal("7.125")]}
    changes = []
    for values in panes.values():
        before = None
        for value in values:
            changes.append(window_change(aggregation, before, value))
            before = value
    expected = period_value(aggregation, [values[-1] for values in panes.values()])
    for order in (changes, changes[::-1], changes[1::2] + changes[::2]):
        usage = Decimal(0)
        for change in order:
            usage = apply_change(aggregation, usage, change)
        assert usage == expected


def test_alert_ids_are_deterministic_and_distinct():
    one = alert_id("c", "m", "2026-11-01T00:00:00Z", "80%")
    assert one == alert_id("c", "m", "2026-11-01T00:00:00Z", "80%")
    assert len({one, alert_id("c", "m", "2026-12-01T00:00:00Z", "80%"),
                alert_id("c", "m", "2026-11-01T00:00:00Z", "100%"),
                alert_id("c", "n", "2026-11-01T00:00:00Z", "80%")}) == 4


@pytest.mark.parametrize("document, error", [
    ({"limit": []}, "a list under 'limits'"),
    ({"limits": [], "periods": []}, "periods: unknown field"),
    ({"limits": [{"meter": "api_requests", "thresholds": [1]}]},
     "limits[0]: give exactly one of plan or subject"),
    ({"limits": [{"plan": "nope", "meter": "api_requests", "thresholds": [1]}]},
     "limits[0].plan: no plan 'nope'"),
    ({"limits": [{"plan": "pro", "meter": "nope", "thresholds": [1]}]},
     "limits[0] (plan pro, meter nope).meter: no meter 'nope'"),
    ({"limits": [{"plan": "pro", "meter": "active_users", "thresholds": [1]}]},
     "(plan pro, meter active_users).meter: a period limit on a UNIQUE_COUNT meter is refused"),
    ({"limits": [{"plan": "pro", "meter": "storage_gb", "thresholds": [1]}]},
     "meter storage_gb).meter: a period limit on a LATEST meter is refused"),
    ({"limits": [{"plan": "pro", "meter": "api_requests", "thresholds": []}]},
     "(plan pro, meter api_requests).thresholds: required"),
    ({"limits": [{"plan": "pro", "meter": "api_requests", "thresholds": [0]}]},
     ".thresholds[0]: must be positive"),
    ({"limits": [{"plan": "pro", "meter": "api_requests", "thresholds": ["80 %", "80%"]}]},
     ".thresholds[1]: 80% is listed twice"),
    ({"limits": [{"plan": "pro", "meter": "api_requests", "thresholds": ["lots"]}]},
     ".thresholds[0]: 'lots' is not a decimal number"),
    ({"limits": [{"plan": "pro", "meter": "api_requests", "thresholds": [0.5]}]},
     ".thresholds[0]: 0.5 is a float"),
    ({"limits": [{"plan": "pro", "meter": "api_requests", "thresholds": ["80%"]}]},
     "(plan pro, meter api_requests).included: required for a percentage: plan pro version 1"),
    ({"limits": [{"plan": "pro", "meter": "api_requests", "thresholds": [1], "x": 1}]},
     "(plan pro, meter api_requests).x: unknown field"),
    ({"limits": [{"plan": "pro", "meter": "api_requests", "thresholds": [1]},
                 {"plan": "pro", "meter": "api_requests", "thresholds": [2]}]},
     "limits[1] (plan pro, meter api_requests).meter: a second entry"),
    ({"limits": [], "billing_periods": [{"subject": "c", "anchor_day": 32}]},
     "billing_periods[0] (subject c).anchor_day: required; the day of the month"),
    ({"limits": [], "billing_periods": [{"plan": "pro", "anchor_day": 2},
                                        {"plan": "pro", "anchor_day": 3}]},
     "billing_periods[1] (plan pro): a second billing period"),
])
def test_invalid_limits_name_the_entry_and_the_field(document, error):
    with pytest.raises(LimitsError) as raised:
        limits(document)
    assert error in str(raised.value)


def test_yaml_numbers_are_read_exactly_and_errors_name_the_file():
    book = parse_limits_text("limits:\n  - {subject: c, meter: api_requests, "
                             "thresholds: [0.1, 12.5%], included: 8}\n",
                             CATALOG, PRICE_BOOK, "l.yaml")
    assert book.levels(PRICE_BOOK, "c", "api_requests", 0) == (
        Level("0.1", Decimal("0.1")), Level("12.5%", Decimal(1)))
    with pytest.raises(LimitsError, match=r"^l\.yaml: limits\[0\]"):
        parse_limits_text(yaml.safe_dump({"limits": [{"meter": "x"}]}), CATALOG, PRICE_BOOK,
                          "l.yaml")
