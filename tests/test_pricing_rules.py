"""Pricing rules one at a time, with expected values written out from docs/pricing.md:
`rate_subject` line by line (every field of usage, zero-usage and limit lines, the
reasons unpriced rows are counted by, the version a zero line is under), adjustments
field by field, tier bounds, and the price book's loading and messages."""
import io
import json
from collections import Counter
from dataclasses import replace
from decimal import Decimal as D

import pytest

from schemas import pricing
from schemas.catalog import parse_catalog
from schemas.pricing import (Line, Model, PriceBookError, UsageWindow, adjustments,
                             load_price_book, parse_price_book, parse_price_book_text,
                             rate_subject)
from schemas.values import parse_rfc3339

HOUR = 3600 * 10 ** 9
NOV = parse_rfc3339("2026-11-01T00:00:00Z")
DEC = parse_rfc3339("2026-12-01T00:00:00Z")


def at(hour: int, meter="calls", value="1", events=1, **dimensions) -> UsageWindow:
    return UsageWindow(meter, dimensions, NOV + hour * HOUR, D(value), events)


def version(number, start, end=None, prices=(), **limits) -> dict:
    spec = {"version": number, "starting_at": start, "prices": list(prices), **limits}
    if end:
        spec["ending_before"] = end
    return spec


def plan(plan_id, *versions, currency="USD") -> dict:
    return {"id": plan_id, "currency": currency, "versions": list(versions)}


def assigned(subject, plan_id, start, end=None) -> dict:
    spec = {"subject": subject, "plan": plan_id, "starting_at": start}
    if end:
        spec["ending_before"] = end
    return spec


def line(subject="acme", plan_id="p", number=1, price="calls", meter="calls", cell="{}",
         model="per_unit", kind="usage", quantity=None, events=None, amount="0",
         unrounded=None, currency="USD") -> Line:
    return Line(subject, plan_id, number, price, meter, cell, model, kind,
                None if quantity is None else D(quantity), events, D(unrounded or amount),
                D(amount), currency)


CALLS = {"id": "calls", "meter": "calls", "model": "per_unit", "unit_amount": "1"}


def test_unpriced_rows_are_counted_once_by_reason_and_the_rest_still_billed():
    book = parse_price_book({
        "plans": [plan("p", version(1, "2026-11-05T00:00:00Z", prices=[CALLS]))],
        "assignments": [assigned("acme", "p", "2026-11-03T00:00:00Z")]})
    rows = [at(-1), at(720),              # before the period; at its end (exclusive)
            at(24), at(25),               # Nov 2: not on a plan yet
            at(48), at(49),               # Nov 3: on the plan, before its first version
            at(120, "other"), at(121, "other"),  # Nov 6: a meter the plan has no price for
            at(120, value="2", events=3)]
    rated = rate_subject(book, "acme", NOV, DEC, rows)
    assert rated.unpriced == Counter(outside_period=2, no_plan_assigned=2, no_plan_version=2,
                                     meter_not_priced=2)
    assert rated.lines == (line(quantity="2", events=3, amount="2"),)


MATRIX = {"id": "traffic", "meter": "traffic", "model": "matrix",
          "dimensions": ["region", "class"],  # not in sorted order
          "cells": [{"values": {"region": "z\u00fcrich", "class": "a"},
                     "model": "per_unit", "unit_amount": "0.125"}],
          "default": {"model": "per_unit", "unit_amount": "1"}}


def test_a_matrix_cells_line_sums_its_windows_rows_and_spells_the_cell_as_sorted_json():
    book = parse_price_book({
        "plans": [plan("p", version(1, "2026-01-01T00:00:00Z", prices=[MATRIX]),
                       currency="EUR")],
        "assignments": [assigned("acme", "p", "2026-01-01T00:00:00Z")]})
    dims = {"class": "a", "region": "z\u00fcrich", "os": "linux"}  # os: not a key of the price
    rated = rate_subject(book, "acme", NOV, DEC, [
        at(0, "traffic", "3", 2, **dims), at(0, "traffic", "4", 5, **dims)])  # one window
    assert rated.lines == (line(price="traffic", meter="traffic", model="matrix",
                                cell='{"class": "a", "region": "z\u00fcrich"}', quantity="7",
                                events=7, unrounded="0.875", amount="0.88", currency="EUR"),)
    assert rated.unpriced == Counter()


FEES = {"id": "fees", "meter": "payments", "model": "matrix", "dimensions": ["region", "class"],
        "cells": [{"values": {"region": "eu", "class": "a"}, "model": "per_unit",
                   "unit_amount": "1"}],
        "default": {"model": "percentage", "percent": "1", "fixed_fee": "0.30"}}


def test_a_price_without_usage_gets_a_zero_line_under_its_latest_version_in_the_period():
    fees = [FEES]
    book = parse_price_book({
        "plans": [
            plan("p", version(1, "2026-01-01T00:00:00Z", "2026-11-05T00:00:00Z", fees),
                 version(2, "2026-11-05T00:00:00Z", "2026-12-05T00:00:00Z", fees),
                 version(3, "2026-12-05T00:00:00Z", prices=fees)),
            plan("late", version(1, "2026-01-01T00:00:00Z", "2026-10-01T00:00:00Z", [CALLS]),
                 version(2, "2026-10-01T00:00:00Z", prices=[CALLS])),
            plan("gone", version(1, "2026-01-01T00:00:00Z", "2026-10-01T00:00:00Z", [CALLS]))],
        "assignments": [
            assigned("acme", "p", "2025-01-01T00:00:00Z", "2025-12-01T00:00:00Z"),
            assigned("acme", "p", "2026-10-01T00:00:00Z", "2026-11-03T00:00:00Z"),
            assigned("bob", "p", "2026-01-01T00:00:00Z"),
            assigned("carol", "late", "2026-01-01T00:00:00Z"),
            assigned("dave", "gone", "2026-01-01T00:00:00Z")]})

    def zero(subject, number):  # no usage, no events: the percentage's per-event fee is 0
        return line(subject, number=number, price="fees", meter="payments", model="matrix",
                    cell='{"class": null, "region": null}', quantity="0", events=0)

    # acme's assignment ends Nov 3, in version 1; bob's spans the period (version 2 is in
    # effect at its end, version 3 starts after it)
    assert rate_subject(book, "acme", NOV, DEC, []).lines == (zero("acme", 1),)
    assert rate_subject(book, "bob", NOV, DEC, []).lines == (zero("bob", 2),)
    assert rate_subject(book, "carol", NOV, DEC, []).lines == (
        line("carol", "late", 2, quantity="0", events=0),)
    assert rate_subject(book, "dave", NOV, DEC, []).lines == ()  # no version in the period


def test_limit_lines_name_only_what_they_limit_and_a_limit_reached_exactly_adds_none():
    traffic = {"id": "traffic", "meter": "traffic", "model": "matrix", "dimensions": ["region"],
               "cells": [{"values": {"region": "eu"}, "model": "per_unit", "unit_amount": "1"}],
               "default": {"model": "per_unit", "unit_amount": "2"}, "minimum": "10.00"}
    book = parse_price_book({
        "plans": [
            plan("p", version(1, "2026-01-01T00:00:00Z", prices=[
                traffic, {**CALLS, "maximum": "5"}], minimum="20")),
            plan("q", version(1, "2026-01-01T00:00:00Z", prices=[
                {**CALLS, "unit_amount": "0.5"}], minimum="3"))],
        "assignments": [assigned("acme", "p", "2026-01-01T00:00:00Z", "2026-11-15T00:00:00Z"),
                        assigned("acme", "q", "2026-11-15T00:00:00Z")]})
    rated = rate_subject(book, "acme", NOV, DEC, [
        at(0, "traffic", "4", region="eu"), at(1, value="5"), at(15 * 24, value="6")])
    assert rated.lines == (
        line(quantity="5", events=1, amount="5"),  # exactly the maximum: no credit line
        line(price="traffic", meter="traffic", model="matrix", cell='{"region": "eu"}',
             quantity="4", events=1, amount="4"),
        line(price="traffic", meter="traffic", model="matrix", kind="minimum", amount="6"),
        line(price=None, meter=None, model=None, kind="minimum", amount="5"),  # 20 - 15
        line(plan_id="q", quantity="6", events=1, amount="3"),  # exactly q's minimum: none
    )


def test_a_minimum_equal_to_the_maximum_bills_exactly_it():
    book = parse_price_book(book_with({**CALLS, "minimum": "5", "maximum": "5.00"}))
    below = rate_subject(book, "acme", NOV, DEC, [at(0, value="2")])
    above = rate_subject(book, "acme", NOV, DEC, [at(0, value="9", events=2)])
    assert below.lines == (line(quantity="2", events=1, amount="2"),
                           line(kind="minimum", amount="3"))  # 5 - 2
    assert above.lines == (line(quantity="9", events=2, amount="9"),
                           line(kind="maximum", amount="-4"))  # 5 - 9
    plan_limits = parse_price_book({"plans": [plan("p", version(
        1, "2026-01-01T00:00:00Z", prices=[CALLS], minimum="5", maximum="5"))],
        "assignments": [assigned("acme", "p", "2026-01-01T00:00:00Z")]})
    assert rate_subject(plan_limits, "acme", NOV, DEC, [at(0, value="9")]).lines == (
        line(quantity="9", events=1, amount="9"),
        line(price=None, meter=None, model=None, kind="maximum", amount="-4"))


def test_a_graduated_line_charges_the_first_tiers_flat_fee_once():
    tiers = [{"up_to": 5, "unit_amount": 5, "flat_amount": 10},
             {"up_to": None, "unit_amount": 4, "flat_amount": 20}]
    book = parse_price_book({
        "plans": [plan("p", version(1, "2026-01-01T00:00:00Z", prices=[
            {"id": "calls", "meter": "calls", "model": "graduated", "tiers": tiers}]))],
        "assignments": [assigned("acme", "p", "2026-01-01T00:00:00Z")]})
    rated = rate_subject(book, "acme", NOV, DEC, [at(0, value="4"), at(1, value="3")])
    # 5 units at 5 + 10, then 2 at 4 + 20
    assert rated.lines == (line(model="graduated", quantity="7", events=2, amount="63"),)


def test_usage_after_an_assignment_ends_is_not_billed_on_it():
    book = parse_price_book({
        "plans": [plan("p", version(1, "2026-01-01T00:00:00Z", prices=[CALLS]))],
        "assignments": [assigned("acme", "p", "2026-01-01T00:00:00Z", "2026-11-10T00:00:00Z")]})
    rated = rate_subject(book, "acme", NOV, DEC,
                         [at(9 * 24 - 1, value="2"), at(11 * 24, value="5")])
    assert rated.unpriced == Counter(no_plan_assigned=1)
    assert rated.lines == (line(quantity="2", events=1, amount="2"),)


def test_the_customers_of_a_period_are_those_on_a_plan_during_it():
    book = parse_price_book({
        "plans": [plan("p", version(1, "2025-01-01T00:00:00Z", prices=[CALLS]))],
        "assignments": [assigned("ended", "p", "2025-01-01T00:00:00Z", "2026-11-01T00:00:00Z"),
                        assigned("later", "p", "2026-12-01T00:00:00Z"),
                        assigned("left", "p", "2025-01-01T00:00:00Z", "2026-11-01T00:00:01Z"),
                        assigned("joined", "p", "2026-11-30T23:59:59Z")]})
    assert book.subjects_in(NOV, DEC) == ["joined", "left"]


def test_adjustments_carry_the_differences_of_quantity_events_and_unrounded_amount():
    kept = line(quantity="10", events=4, amount="11.00")
    dropped = line(price="bytes", meter="bytes", quantity="3", events=2, amount="6")
    floor = line(price=None, meter=None, model=None, kind="minimum", amount="3.67")
    same = line(price="seats", meter="seats", quantity="1", events=1, unrounded="1.001",
                amount="1.00")
    previous = [kept, dropped, floor, same]
    current = [replace(kept, quantity=D(12), event_count=7, unrounded=D("9.996"),
                       amount=D("10.00")),
               line(price="storage", meter="storage", quantity="5", events=5,
                    unrounded="2.5", amount="2.50"),
               replace(same, unrounded=D("1.004"))]  # rounds to the same amount: no change
    by_price = {(kind, diff.price_id, diff.kind): (diff, old)
                for kind, diff, old in adjustments(previous, current)}
    assert by_price == {
        ("credit", "calls", "usage"): (
            replace(kept, quantity=D(2), event_count=3, unrounded=D("-1.004"),
                    amount=D("-1.00")), kept),
        ("credit", "bytes", "usage"): (
            replace(dropped, quantity=D(-3), event_count=-2, unrounded=D(-6), amount=D(-6)),
            dropped),
        ("credit", None, "minimum"): (replace(floor, unrounded=D("-3.67"),
                                              amount=D("-3.67")), floor),
        ("debit", "storage", "usage"): (current[1], None),
    }


BOUNDED = [{"up_to": 10, "unit_amount": "0.50"}, {"up_to": 1000, "unit_amount": "0.40"}]


def one_price(spec: dict):
    book = parse_price_book({"plans": [plan("p", version(1, "2026-01-01T00:00:00Z",
                                                         prices=[spec]))],
                             "assignments": []})
    return book.plans[0].versions[0].prices[0]


@pytest.mark.parametrize("model, at_the_bound", [("graduated", "401.00"), ("volume", "400.00")])
def test_a_bounded_last_tier_prices_up_to_its_bound_and_refuses_beyond(model, at_the_bound):
    price = one_price({"id": "calls", "meter": "calls", "model": model, "tiers": BOUNDED})
    assert price.amount(D(1000)) == D(at_the_bound)  # 10 x 0.50 + 990 x 0.40; 1000 x 0.40
    with pytest.raises(ValueError, match=r"^quantity 1000\.5 is beyond the last tier "
                                         r"\(up_to 1000\); give the last tier up_to: null$"):
        price.amount(D("1000.5"))


def test_a_per_event_fee_is_charged_only_for_events():
    price = one_price({"id": "calls", "meter": "calls", "model": "percentage", "percent": "2",
                       "fixed_fee": "0.25"})
    assert price.amount(D(100)) == D(2)  # no events given: none charged
    assert price.amount(D(100), 4) == D(3)
    assert Model("percentage", percent=D(2), fixed_fee=D("0.25")).amount(D(100)) == D(2)


def test_a_percentage_price_may_be_a_fee_per_event_alone():
    price = one_price({"id": "calls", "meter": "calls", "model": "percentage",
                       "fixed_fee": "0.25"})
    assert price.amount(D(100), 3) == D("0.75")  # 100 x 0 / 100 + 3 x 0.25


def test_free_units_come_off_every_model_that_has_them():
    per_unit = one_price({**CALLS, "unit_amount": "2", "free_units": "3"})
    assert (per_unit.amount(D(3)), per_unit.amount(D("10.5"))) == (0, D(15))  # 7.5 x 2
    package = one_price({"id": "calls", "meter": "calls", "model": "package",
                         "package_size": "4", "package_amount": "5", "free_units": "3"})
    assert (package.amount(D(3)), package.amount(D(8))) == (0, D(10))  # 5 billable: 2 packages
    for model in ("graduated", "volume"):
        tiered = one_price({**graduated({"up_to": None, "unit_amount": "2"}), "model": model,
                            "free_units": "3"})
        assert (tiered.amount(D(3)), tiered.amount(D(10))) == (0, D(14))  # 7 x 2


def test_yaml_numbers_in_cells_are_spelled_as_usage_rows_spell_them_and_inf_is_refused():
    text = ("plans:\n- id: p\n  currency: USD\n  versions:\n  - version: 1\n"
            "    starting_at: '2026-01-01T00:00:00Z'\n    prices:\n    - id: calls\n"
            "      meter: calls\n      model: matrix\n      dimensions: [size]\n"
            "      cells:\n      - values: {size: 1.50}\n        model: per_unit\n"
            "        unit_amount: 1\n      default: {model: per_unit, unit_amount: %s}\n")
    price = parse_price_book_text(text % "2").plans[0].versions[0].prices[0]
    assert price.cells[0][0] == ("1.5",)  # a YAML number, read as its decimal value
    with pytest.raises(PriceBookError) as caught:
        parse_price_book_text(text % ".inf")
    assert str(caught.value) == f"price book: {PRICE}.default.unit_amount: '.inf' is not a " \
                                "decimal number"


def test_yaml_numbers_may_group_digits_with_underscores():
    book = parse_price_book_text(
        "plans:\n- id: p\n  currency: USD\n  versions:\n  - version: 1\n"
        "    starting_at: '2026-01-01T00:00:00Z'\n    prices:\n    - id: calls\n"
        "      meter: calls\n      model: per_unit\n      unit_amount: 1_000.5\n")
    assert book.plans[0].versions[0].prices[0].model.unit_amount == D("1000.5")


def test_a_price_on_an_unknown_meter_or_dimensions_is_refused_in_full():
    catalog = parse_catalog({"meters": [{"key": "calls", "event_type": "call",
                                         "aggregation": "COUNT",
                                         "group_by": {"region": "$.region"}}]})
    where = "plans (p).versions (1).prices"
    unknown_meter = parse_price_book({
        "plans": [plan("p", version(1, "2026-01-01T00:00:00Z", prices=[
            {**CALLS, "id": "bytes", "meter": "bytes"}]))], "assignments": []})
    with pytest.raises(PriceBookError) as caught:
        unknown_meter.check_meters(catalog)
    assert str(caught.value) == f"{where} (bytes).meter: no meter 'bytes' in the catalog"
    matrix = {"id": "calls", "meter": "calls", "model": "matrix",
              "dimensions": ["zone", "region", "os"],
              "cells": [{"values": {"zone": "a", "region": "eu", "os": "x"},
                         "model": "per_unit", "unit_amount": "1"}],
              "default": {"model": "per_unit", "unit_amount": "1"}}
    unknown_keys = parse_price_book({
        "plans": [plan("p", version(1, "2026-01-01T00:00:00Z", prices=[matrix]))],
        "assignments": []})
    with pytest.raises(PriceBookError) as caught:
        unknown_keys.check_meters(catalog)
    assert str(caught.value) == \
        f"{where} (calls).dimensions: os, zone not a group-by key of meter calls"


PRICE = "plans[0] (p).versions[0] (version 1).prices[0] (calls)"
CELL_MODELS = "per_unit, package, graduated, volume, percentage"


def matrix(**fields) -> dict:
    spec = {"id": "calls", "meter": "calls", "model": "matrix", "dimensions": ["region", "os"],
            "cells": [{"values": {"region": "eu", "os": "x"}, "model": "per_unit",
                       "unit_amount": "1"}],
            "default": {"model": "per_unit", "unit_amount": "2"}}
    return {key: value for key, value in {**spec, **fields}.items() if value is not None}


def book_with(price=None, assignment=None) -> dict:
    return {"plans": [plan("p", version(1, "2026-01-01T00:00:00Z", prices=[price or CALLS]))],
            "assignments": [assignment or assigned("acme", "p", "2026-01-01T00:00:00Z")]}


def graduated(*tiers) -> dict:
    return {"id": "calls", "meter": "calls", "model": "graduated", "tiers": list(tiers)}


REFUSALS = [
    (book_with("x"), "plans[0] (p).versions[0] (version 1).prices[0]: must be a mapping"),
    (book_with({**CALLS, "meter": "Calls"}),
     f"{PRICE}.meter: required; the key of a meter in the catalog"),
    (book_with({**CALLS, "model": "tiered"}),
     f"{PRICE}.model: must be one of {CELL_MODELS}, matrix, got 'tiered'"),
    (book_with({**CALLS, "unit_amount": None}), f"{PRICE}.unit_amount: required for per_unit"),
    (book_with({**CALLS, "unit_amount": [1]}),
     f"{PRICE}.unit_amount: must be a decimal number, got [1]"),
    (book_with({**CALLS, "unit_amount": True}),
     f"{PRICE}.unit_amount: must be a decimal number, got True"),
    (book_with({**CALLS, "unit_amount": 0.5}),
     f"{PRICE}.unit_amount: 0.5 is a float; write amounts as decimal strings or YAML numbers"),
    (book_with({**CALLS, "minimum": "1.001"}),
     f"{PRICE}.minimum: 1.001 is finer than the USD minor unit"),
    (book_with({**CALLS, "description": 5}), f"{PRICE}.description: must be a string"),
    (book_with({**CALLS, "minimum": "-1"}), f"{PRICE}.minimum: must be zero or more, got -1"),
    (book_with({**CALLS, "minimum": "5", "maximum": "4.99"}),
     f"{PRICE}.maximum: below the minimum"),
    (book_with({"id": "calls", "meter": "calls", "model": "percentage"}),
     f"{PRICE}.percent: required for percentage (or fixed_fee)"),
    (book_with({"id": "calls", "meter": "calls", "model": "package", "package_size": "0",
                "package_amount": "1"}), f"{PRICE}.package_size: must be positive, got 0"),
    (book_with(matrix(dimensions="region")), f"{PRICE}.dimensions: required for matrix; "
                                              "a list of distinct group-by keys of the meter"),
    (book_with(matrix(dimensions=[])), f"{PRICE}.dimensions: required for matrix; "
                                        "a list of distinct group-by keys of the meter"),
    (book_with(matrix(dimensions=["region", 1])), f"{PRICE}.dimensions: required for matrix; "
                                                   "a list of distinct group-by keys of the meter"),
    (book_with(matrix(dimensions=["region", "region"])),
     f"{PRICE}.dimensions: required for matrix; a list of distinct group-by keys of the meter"),
    (book_with(matrix(colour="red")), f"{PRICE}.colour: unknown field"),
    (book_with(matrix(description=5)), f"{PRICE}.description: must be a string"),
    (book_with(matrix(cells=["x"])), f"{PRICE}.cells[0]: must be a mapping"),
    (book_with(matrix(cells=[{"values": "eu", "model": "per_unit", "unit_amount": "1"}])),
     f"{PRICE}.cells[0].values: must be a mapping"),
    (book_with(matrix(cells=[{"values": {"region": "eu"}, "model": "per_unit",
                              "unit_amount": "1"}])),
     f"{PRICE}.cells[0].values: must give a value for each of region, os"),
    (book_with(matrix(cells=[{"values": {"region": "eu", "os": ["x"]}, "model": "per_unit",
                              "unit_amount": "1"}])),
     f"{PRICE}.cells[0].values.os: must be a string, number, boolean or null"),
    (book_with(matrix(cells=[{"values": {"region": "eu", "os": "x"}, "model": "per_unit",
                              "unit_amount": "1"}] * 2)),
     f"{PRICE}.cells[1].values: duplicate cell"),
    (book_with(matrix(cells=[{"values": {"region": "eu", "os": "x"}, "model": "matrix"}])),
     f"{PRICE}.cells[0].model: must be one of {CELL_MODELS}, got 'matrix'"),
    (book_with(matrix(cells=[])), f"{PRICE}.cells: required for matrix; at least one cell"),
    (book_with(matrix(default=None)),
     f"{PRICE}.default: required for matrix; the price of usage no cell matches"),
    (book_with(matrix(default="x")), f"{PRICE}.default: must be a mapping"),
    (book_with(matrix(default={"model": "per_unit", "unit_amount": "1", "colour": "red"})),
     f"{PRICE}.default.colour: unknown field"),
    (book_with(graduated()),
     f"{PRICE}.tiers: required; a list of tiers (the last usually up_to: null)"),
    (book_with(graduated("x")), f"{PRICE}.tiers[0]: must be a mapping"),
    (book_with(graduated({"up_to": None, "unit_amount": "1", "colour": "red"})),
     f"{PRICE}.tiers[0].colour: unknown field"),
    (book_with(graduated({"up_to": "0", "unit_amount": "1"}, {"up_to": None, "unit_amount": 1})),
     f"{PRICE}.tiers[0].up_to: must be positive, got 0"),
    (book_with(graduated({"up_to": None, "unit_amount": "-1"})),
     f"{PRICE}.tiers[0].unit_amount: must be zero or more, got -1"),
    (book_with(graduated({"up_to": None, "flat_amount": "-1"})),
     f"{PRICE}.tiers[0].flat_amount: must be zero or more, got -1"),
    (book_with(assignment="x"), "assignments[0]: must be a mapping"),
    ({**book_with(), "colour": "red"}, "colour: unknown field"),
    ({**book_with(), 5: "x", "colour": "red"}, "5: unknown field"),  # first by its text
    *((document, "the price book must be a mapping with a list under 'plans'")
      for document in ([], {"plans": "x"}, {"assignments": []})),
    ({"plans": ["x"]}, "plans[0]: must be a mapping"),
    ({"plans": [plan("p", version(1, "2026-01-01T00:00:00Z", "2025-12-31T23:59:59Z",
                                  prices=[CALLS]))]},
     "plans[0] (p).versions[0] (version 1).ending_before: must be after starting_at "
     "(2026-01-01T00:00:00Z)"),
    (book_with(assignment=assigned("acme", "p", "2026-02-01T00:00:00Z",
                                   "2026-01-31T00:00:00Z")),
     "assignments[0] (acme).ending_before: must be after starting_at (2026-02-01T00:00:00Z)"),
    ({"plans": [{**plan("p", version(1, "2026-01-01T00:00:00Z", prices=[CALLS])),
                 "colour": "red"}]}, "plans[0] (p).colour: unknown field"),
    ({"plans": [plan("p", version(1, "2026-01-01T00:00:00Z", prices=[CALLS], colour="red"))]},
     "plans[0] (p).versions[0] (version 1).colour: unknown field"),
    ({"plans": [plan("p", "x")]}, "plans[0] (p).versions[0]: must be a mapping"),
    *(({"plans": [plan("p", version(number, "2026-01-01T00:00:00Z", prices=[CALLS]))]},
       "plans[0] (p).versions[0].version: required; a positive integer")
      for number in (0, -1, "1", True, None)),
    ({"plans": [plan("p", version(1, "2026-01-01T00:00:00Z", prices=[CALLS]))] * 2},
     "plans[1] (p).id: duplicate plan id"),
    *(({"plans": [{**plan(plan_id, version(1, "2026-01-01T00:00:00Z", prices=[CALLS]))}]},
       "plans[0].id: required; lowercase letters, digits and _, starting with a letter, at "
       "most 64 characters") for plan_id in ("P", "1p", "a" * 65, "", 5)),
    ({"plans": [plan("p", version(1, "2026-01-01T00:00:00Z", prices=[CALLS]),
                     currency="XTS")]},
     "plans[0] (p).currency: must be an ISO 4217 code tallyflow knows the minor unit of "
     f"({', '.join(sorted(pricing.MINOR_UNITS))}), got 'XTS'"),
    ({"plans": [plan("p")]}, "plans[0] (p).versions: required; a list of at least one version"),
    ({"plans": [plan("p", version(1, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z",
                                  prices=[CALLS]),
                     version(1, "2026-02-01T00:00:00Z", prices=[CALLS]))]},
     "plans[0] (p).versions (version 1).version: versions must increase with starting_at "
     "(version 1 starts earlier)"),
    ({"plans": [{**plan("p", version(1, "2026-01-01T00:00:00Z", prices=[CALLS])),
                 "description": 5}]}, "plans[0] (p).description: must be a string"),
    ({"plans": [plan("p", version(3, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z",
                                  prices=[CALLS]),
                     version(2, "2026-02-01T00:00:00Z", prices=[CALLS]))]},
     "plans[0] (p).versions (version 2).version: versions must increase with starting_at "
     "(version 3 starts earlier)"),
    ({"plans": [plan("p", version(1, "2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z",
                                  prices=[CALLS]),
                     version(2, "2026-02-01T00:00:00Z", prices=[CALLS]))]},
     "plans[0] (p).versions (version 2).starting_at: overlaps version 1; end it "
     "(ending_before) first"),
    ({"plans": [plan("p", version(1, "2026-01-01T00:00:00Z"))]},
     "plans[0] (p).versions[0] (version 1).prices: required; a list of at least one price"),
    ({"plans": [plan("p", version(1, "2026-01-01T00:00:00Z", prices=[
        CALLS, {**CALLS, "id": "other"}]))]},
     "plans[0] (p).versions[0] (version 1).prices[1] (other).meter: calls already has a price "
     "in this version (a usage row would be billed twice)"),
    ({"plans": [plan("p", version(1, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z",
                                  prices=[CALLS]))]},
     "plans[0] (p).versions[0] (version 1).ending_before: must be after starting_at "
     "(2026-01-01T00:00:00Z)"),
    ({**book_with(), "assignments": "x"}, "assignments: must be a list"),
    (book_with(assignment=assigned("acme", "q", "2026-01-01T00:00:00Z")),
     "assignments[0] (acme).plan: no plan 'q' in the price book"),
    ({**book_with(), "assignments": [assigned("acme", "p", "2026-01-01T00:00:00Z",
                                              "2026-03-01T00:00:00Z"),
                                     assigned("beta", "p", "2026-01-01T00:00:00Z"),
                                     assigned("acme", "p", "2026-02-01T00:00:00Z")]},
     "assignments[2] (acme).starting_at: overlaps assignments[0]; a customer is on one plan "
     "at a time"),
    (book_with(assignment={"subject": "", "plan": "p", "starting_at": "2026-01-01T00:00:00Z"}),
     "assignments[0].subject: required; the customer id (1-256 characters)"),
    (book_with(assignment={"subject": "a" * 257, "plan": "p",
                           "starting_at": "2026-01-01T00:00:00Z"}),
     "assignments[0].subject: required; the customer id (1-256 characters)"),
    (book_with(assignment={**assigned("acme", "p", "2026-01-01T00:00:00Z"), "colour": "red"}),
     "assignments[0] (acme).colour: unknown field"),
]


@pytest.mark.parametrize("book, message", REFUSALS)
def test_every_refusal_names_the_item_and_field_in_full(book, message):
    with pytest.raises(PriceBookError) as caught:
        parse_price_book(book)
    assert str(caught.value) == message


def test_a_refused_assignment_time_names_the_assignment():
    with pytest.raises(PriceBookError, match=r"^assignments\[0\] \(acme\)\.starting_at: "
                                             r"required; "):
        parse_price_book(book_with(assignment={"subject": "acme", "plan": "p"}))


def test_errors_of_a_price_book_text_start_with_its_name(tmp_path):
    with pytest.raises(PriceBookError, match=r"^price book: the price book must be a mapping"):
        parse_price_book_text("plans: 5")
    with pytest.raises(PriceBookError, match=r"^prices\.yaml: not valid YAML: "):
        parse_price_book_text("plans: [", "prices.yaml")
    path = tmp_path / "prices.yaml"
    path.write_text("plans: 5\n", encoding="utf-8")
    with pytest.raises(PriceBookError) as caught:
        load_price_book(str(path))
    assert str(caught.value) == \
        f"{path}: the price book must be a mapping with a list under 'plans'"


def test_a_price_book_file_is_read_as_utf8_whatever_the_locale(tmp_path, monkeypatch):
    path = tmp_path / "prices.yaml"
    book = book_with({**CALLS, "description": "Z\u00fcrich \u2014 \u65e5\u672c"})
    path.write_text(json.dumps(book, ensure_ascii=False), encoding="utf-8")  # JSON is YAML

    def open_in_an_ascii_locale(file, mode="r", encoding=None, **options):
        """`open` where the locale's encoding is ASCII, as on a host without a UTF-8 locale."""
        return io.open(file, mode, encoding=encoding or "ascii", **options)

    monkeypatch.setattr(pricing, "open", open_in_an_ascii_locale, raising=False)
    loaded = load_price_book(str(path)).plans[0].versions[0].prices[0]
    assert loaded.description == "Z\u00fcrich \u2014 \u65e5\u672c"


def test_a_customers_assignments_may_be_listed_in_any_order_and_plans_keep_descriptions():
    book = parse_price_book({
        "plans": [{**plan("p", version(1, "2026-01-01T00:00:00Z", prices=[CALLS])),
                   "description": "Pro, monthly"},
                  plan("q", version(1, "2026-01-01T00:00:00Z", prices=[CALLS]))],
        "assignments": [assigned("acme", "q", "2026-03-01T00:00:00Z"),  # the later one first
                        assigned("acme", "p", "2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z")]})
    assert [p.description for p in book.plans] == ["Pro, monthly", ""]
    assert [book.assignment_at("acme", parse_rfc3339(t)).plan
            for t in ("2026-02-28T23:59:59Z", "2026-03-01T00:00:00Z")] == ["p", "q"]


def test_what_a_valid_price_book_holds():
    limited = matrix(minimum="1.50", maximum="9", description="by region",
                     cells=[{"values": {"region": True, "os": D("1.50")}, "model": "per_unit",
                             "unit_amount": " 2 "},
                            {"values": {"region": False, "os": None}, "model": "package",
                             "package_size": "1", "package_amount": "3"}])
    book = parse_price_book(book_with(limited))
    price = book.plans[0].versions[0].prices[0]
    assert (price.id, price.minimum, price.maximum, price.description) == \
        ("calls", D("1.50"), D(9), "by region")
    assert [values for values, _ in price.cells] == [("true", "1.5"), ("false", None)]
    assert price.cells[0][1].unit_amount == D(2) and price.cells[1][1].package_size == D(1)
    assert book.plans[0].versions[0].prices[0].default.unit_amount == D(2)
    plain = parse_price_book(book_with()).plans[0].versions[0].prices[0]
    assert plain.description == ""
    flat_only = parse_price_book(book_with(graduated({"up_to": None, "flat_amount": "5"})))
    tier, = flat_only.plans[0].versions[0].prices[0].model.tiers
    assert (tier.unit_amount, tier.flat_amount) == (0, 5)
    longest = parse_price_book(book_with(assignment=assigned("a" * 256, "p",
                                                             "2026-01-01T00:00:00Z")))
    assert longest.assignments[0].subject == "a" * 256


@pytest.mark.parametrize("before, quantity, total", [
    (0.5, D(1), D(2)), (D(0), 1.5, D(2)), (D(0), D(1), 2.5)])
def test_a_float_anywhere_in_a_charge_is_refused_by_name(before, quantity, total):
    with pytest.raises(TypeError, match="^amounts and quantities are Decimals, got float$"):
        Model("per_unit", unit_amount=D(1)).charge(before, quantity, 0, first=True, last=True,
                                                     total=total)
