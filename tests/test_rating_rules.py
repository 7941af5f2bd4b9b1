"""`rate_subject` line by line: every field of the lines it makes (usage, zero-usage and
limit lines), the reasons it counts unpriced rows by, and which version a zero line
is under; expected lines written out from docs/pricing.md's rules."""
from collections import Counter
from decimal import Decimal as D

from schemas.pricing import Line, UsageWindow, parse_price_book, rate_subject
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
