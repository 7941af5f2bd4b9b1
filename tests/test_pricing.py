"""Pricing: every model on the vendors' published examples, the period rules, validation,
properties (hypothesis), and the rating transform."""
import json
from decimal import Decimal as D

import apache_beam as beam
import pytest
import yaml
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.catalog import load_catalog
from schemas.pricing import (Model, PriceBookError, Tier, UsageWindow, adjustments,
                             graduated_amount, load_price_book, parse_price_book,
                             parse_price_book_text, rate_subject, round_money, volume_amount)
from schemas.values import parse_rfc3339
from tests.conftest import EXAMPLE_METERS, ROOT
from transforms.rating import RateSubjects, RatingRun

HOUR = 3600 * 10 ** 9
NOV = parse_rfc3339("2026-11-01T00:00:00Z")
DEC = parse_rfc3339("2026-12-01T00:00:00Z")


def price_book(*prices, minimum=None, maximum=None, currency="USD", versions=None,
               subject="acme") -> dict:
    """A book with one plan `p` whose single version holds `prices`, assigned to `subject`."""
    version = {"version": 1, "starting_at": "2026-01-01T00:00:00Z", "prices": list(prices)}
    if minimum is not None:
        version["minimum"] = minimum
    if maximum is not None:
        version["maximum"] = maximum
    return {"plans": [{"id": "p", "currency": currency, "versions": versions or [version]}],
            "assignments": [{"subject": subject, "plan": "p",
                             "starting_at": "2026-01-01T00:00:00Z"}]}


def price(meter="calls", **model) -> dict:
    return {"id": meter, "meter": meter, **model}


def single(spec: dict):
    """The one price of a one-price book, parsed from YAML text (as users write it)."""
    book = parse_price_book_text(yaml.safe_dump(price_book(spec)))
    return book.plans[0].versions[0].prices[0]


def usage(value, window=0, meter="calls", events=1, **dims) -> UsageWindow:
    return UsageWindow(meter, dims, NOV + window * HOUR, D(value), events)


def rate(book: dict, rows, subject="acme"):
    return rate_subject(parse_price_book(book), subject, NOV, DEC, rows)


STRIPE_TIERS = [{"up_to": 5, "unit_amount": "7"}, {"up_to": 10, "unit_amount": "6.50"},
                {"up_to": None, "unit_amount": "6"}]
STRIPE_FLAT_TIERS = [{"up_to": 5, "unit_amount": 5, "flat_amount": 10},
                     {"up_to": 10, "unit_amount": 4, "flat_amount": 20},
                     {"up_to": None, "unit_amount": 3, "flat_amount": 30}]


# ------------------------------------------------------- published examples


@pytest.mark.parametrize("quantity, volume, graduated", [
    (6, "39", "41.50"), (20, "120", "127.50"), (25, "150", "157.50")])
def test_stripe_tiers_volume_and_graduated(quantity, volume, graduated):
    assert single(price(model="volume", tiers=STRIPE_TIERS)).amount(D(quantity)) == D(volume)
    assert single(price(model="graduated", tiers=STRIPE_TIERS)).amount(D(quantity)) == \
        D(graduated)


def test_stripe_tiers_with_flat_fees_twelve_units():
    assert single(price(model="volume", tiers=STRIPE_FLAT_TIERS)).amount(D(12)) == D(66)
    assert single(price(model="graduated", tiers=STRIPE_FLAT_TIERS)).amount(D(12)) == D(111)


def test_lago_package_of_100_with_the_first_100_free():
    spec = price(model="package", package_size=100, package_amount=5, free_units=100)
    assert single(spec).amount(D(201)) == D(10)


def test_orb_bulk_101_units():
    tiers = [{"up_to": 10, "unit_amount": "0.50"}, {"up_to": 1000, "unit_amount": "0.40"}]
    assert single(price(model="volume", tiers=tiers)).amount(D(101)) == D("40.40")


def test_usage_beyond_a_bounded_last_tier_is_refused_not_guessed():
    tiers = [{"up_to": 10, "unit_amount": "0.50"}, {"up_to": 1000, "unit_amount": "0.40"}]
    with pytest.raises(ValueError, match="beyond the last tier"):
        single(price(model="volume", tiers=tiers)).amount(D(1001))


# -------------------------------------------------------- boundaries, zero


@pytest.mark.parametrize("quantity, volume, graduated", [
    ("5", "35", "35"),            # up_to is inclusive: 5 is still tier 1
    ("5.5", "35.75", "38.25"),    # the next tier starts right after it
    ("10", "65", "67.50"),
    ("10.000000001", "60.000000006", "67.500000006"),
])
def test_tier_bounds_are_inclusive(quantity, volume, graduated):
    assert single(price(model="volume", tiers=STRIPE_TIERS)).amount(D(quantity)) == D(volume)
    assert single(price(model="graduated", tiers=STRIPE_TIERS)).amount(D(quantity)) == \
        D(graduated)


@pytest.mark.parametrize("quantity, volume, graduated", [
    ("5", "35", "35"),        # 5 x 5 + 10: at the bound, the next tier is not reached
    ("5.5", "42", "57"),      # 5.5 x 4 + 20; 35 + 0.5 x 4 + 20
    ("10", "60", "75"),       # 10 x 4 + 20; 35 + 5 x 4 + 20
    ("10.5", "61.5", "106.5"),  # 10.5 x 3 + 30; 75 + 0.5 x 3 + 30
])
def test_a_tiers_flat_fee_is_due_only_beyond_the_previous_bound(quantity, volume, graduated):
    assert single(price(model="volume", tiers=STRIPE_FLAT_TIERS)).amount(D(quantity)) == \
        D(volume)
    assert single(price(model="graduated", tiers=STRIPE_FLAT_TIERS)).amount(D(quantity)) == \
        D(graduated)


def test_zero_usage_pays_the_first_tiers_flat_fee_and_nothing_else():
    assert single(price(model="volume", tiers=STRIPE_FLAT_TIERS)).amount(D(0)) == D(10)
    assert single(price(model="graduated", tiers=STRIPE_FLAT_TIERS)).amount(D(0)) == D(10)
    assert single(price(model="package", package_size=100, package_amount=5)).amount(D(0)) == 0
    assert single(price(model="per_unit", unit_amount="0.1")).amount(D(0)) == 0


@pytest.mark.parametrize("quantity, packages", [(0, 0), (1, 1), (100, 1), (101, 2), ("100.5", 2),
                                                (200, 2)])
def test_package_counts_a_started_package_whole(quantity, packages):
    assert single(price(model="package", package_size=100, package_amount=5)).amount(
        D(quantity)) == 5 * packages


@pytest.mark.parametrize("quantity, amount", [(0, 0), (100, 0), (101, 5), (200, 5), (201, 10)])
def test_free_units_of_a_package(quantity, amount):
    spec = price(model="package", package_size=100, package_amount=5, free_units=100)
    assert single(spec).amount(D(quantity)) == amount


def test_free_allowance_before_graduated_tiers():
    spec = price(model="graduated", tiers=STRIPE_TIERS, free_units=3)
    assert single(spec).amount(D(3)) == 0
    assert single(spec).amount(D(9)) == D("41.50")  # 6 billable


def test_percentage_of_a_value_plus_a_fee_per_event():
    spec = price(meter="amount", model="percentage", percent="1.3", fixed_fee="0.30")
    assert single(spec).amount(D("1000.00"), events=4) == D("14.2")
    assert single(spec).amount(D("0.10"), events=1) == D("0.3013")


def test_matrix_prices_by_dimension_with_a_default():
    spec = price(meter="tokens", model="matrix", dimensions=["model", "region"], cells=[
        {"values": {"model": "large", "region": "eu"}, "model": "per_unit", "unit_amount": 3},
        {"values": {"model": "small", "region": None}, "model": "per_unit", "unit_amount": 1}],
        default={"model": "graduated", "tiers": [{"up_to": 10, "unit_amount": 2},
                                                 {"up_to": None, "unit_amount": 1}]})
    matrix = single(spec)
    assert matrix.amount(D(10), dimensions={"model": "large", "region": "eu"}) == 30
    assert matrix.amount(D(10), dimensions={"model": "small"}) == 10
    assert matrix.amount(D(12), dimensions={"model": "large", "region": "us"}) == 22
    assert matrix.amount(D(12)) == 22


def test_round_half_up_to_the_minor_unit():
    assert round_money(D("0.005"), "USD") == D("0.01")
    assert round_money(D("0.0049999"), "USD") == D("0.00")
    assert round_money(D("-0.005"), "USD") == D("-0.01")  # a credit mirrors its debit
    assert round_money(D("2.5"), "JPY") == D("3")
    assert round_money(D("1.0005"), "KWD") == D("1.001")


# ------------------------------------------------------------ the period


def test_a_mid_period_version_change_splits_at_the_window_and_tiers_count_the_period():
    v1 = {"version": 1, "starting_at": "2026-01-01T00:00:00Z",
          "ending_before": "2026-11-01T02:00:00Z",
          "prices": [price(model="graduated", tiers=STRIPE_TIERS)]}
    v2 = {"version": 2, "starting_at": "2026-11-01T02:00:00Z",
          "prices": [price(model="graduated", tiers=[
              {"up_to": 5, "unit_amount": "8"}, {"up_to": 10, "unit_amount": "7"},
              {"up_to": None, "unit_amount": "5"}])]}
    rated = rate(price_book(versions=[v1, v2]),
                 [usage(3, 0, events=3), usage(1, 1), usage(4, 2, events=2), usage(5, 3)])
    lines = [(line.plan_version, line.quantity, line.event_count, line.amount)
             for line in rated.lines]
    # v1 prices the first 4 units (tier 1 at 7); v2 the next 9: 1 in tier 1 at 8,
    # 5 in tier 2 at 7, 3 in tier 3 at 5
    assert lines == [(1, 4, 4, D(28)), (2, 9, 3, D(8 + 35 + 15))]


def test_volume_across_versions_uses_the_tier_the_period_reaches():
    v1 = {"version": 1, "starting_at": "2026-01-01T00:00:00Z",
          "ending_before": "2026-11-01T01:00:00Z",
          "prices": [price(model="volume", tiers=STRIPE_FLAT_TIERS)]}
    v2 = {"version": 2, "starting_at": "2026-11-01T01:00:00Z",
          "prices": [price(model="volume", tiers=STRIPE_FLAT_TIERS)]}
    rated = rate(price_book(versions=[v1, v2]), [usage(4, 0), usage(8, 1)])
    # 12 units reach tier 3 ($3 + $30 flat, charged once with the last units)
    assert [line.amount for line in rated.lines] == [D(12), D(24 + 30)]
    assert sum(line.amount for line in rated.lines) == 66


def test_an_assigned_customer_without_usage_gets_zero_lines_and_pays_fixed_fees():
    book = price_book(price(model="graduated", tiers=STRIPE_FLAT_TIERS),
                      price(meter="bytes", model="per_unit", unit_amount=1))
    rated = rate(book, [])
    assert [(line.price_id, line.quantity, line.amount) for line in rated.lines] == [
        ("bytes", 0, 0), ("calls", 0, 10)]


def test_unpriced_usage_is_counted_not_billed():
    book = price_book(price(model="per_unit", unit_amount=1))
    rated = rate(book, [usage(1, meter="other"), usage(2)])
    assert rated.unpriced == {"meter_not_priced": 1}
    assert [line.amount for line in rated.lines] == [2]
    nobody = rate(book, [usage(2)], subject="stranger")
    assert nobody.lines == () and nobody.unpriced == {"no_plan_assigned": 1}


def test_rounding_happens_once_per_line_not_per_window():
    book = price_book(price(model="per_unit", unit_amount="0.004"))
    rated = rate(book, [usage(1, hour) for hour in range(100)])
    line, = rated.lines
    assert (line.quantity, line.unrounded, line.amount) == (100, D("0.400"), D("0.40"))
    # rounded per window, each 0.004 would have been 0.00


def test_minimum_true_up_and_maximum_cap_per_price_and_per_plan():
    book = price_book(price(model="per_unit", unit_amount="0.333", minimum="5.00"),
                      price(meter="bytes", model="per_unit", unit_amount=1, maximum="10"),
                      minimum="30")
    rated = rate(book, [usage(4), usage(25, meter="bytes")])
    got = [(line.price_id, line.kind, line.unrounded, line.amount) for line in rated.lines]
    assert got == [
        ("bytes", "usage", D(25), D(25)), ("bytes", "maximum", D(-15), D(-15)),
        ("calls", "usage", D("1.332"), D("1.33")), ("calls", "minimum", D("3.67"), D("3.67")),
        (None, "minimum", D("15.00"), D("15.00"))]
    assert sum(line.amount for line in rated.lines) == 30


def test_adjustments_credit_and_debit_only_what_changed():
    v1 = price_book(price(model="per_unit", unit_amount="1.10"),
                    price(meter="bytes", model="per_unit", unit_amount=2))
    v2 = price_book(price(model="per_unit", unit_amount="0.90"),
                    price(meter="bytes", model="per_unit", unit_amount=2))
    rows = [usage(10), usage(3, meter="bytes")]
    before, after = rate(v1, rows).lines, rate(v2, rows).lines
    changes = adjustments(list(before), list(after))
    assert [(kind, line.price_id, line.amount, old.amount) for kind, line, old in changes] == [
        ("credit", "calls", D("-2.00"), D("11.00"))]
    dropped = adjustments(list(before), [])
    assert sorted((kind, line.amount) for kind, line, _ in dropped) == [
        ("credit", D("-11.00")), ("credit", D(-6))]


# ------------------------------------------------------------- validation


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b["plans"][0].update(currency="XXX"), r"plans\[0\] \(p\)\.currency"),
    (lambda b: b["plans"][0]["versions"][0]["prices"][0].update(model="tiered"),
     r"prices\[0\] \(calls\)\.model: must be one of"),
    (lambda b: b["plans"][0]["versions"][0]["prices"][0].update(unit_amount="-1"),
     r"\(calls\)\.unit_amount: must be zero or more"),
    (lambda b: b["plans"][0]["versions"][0]["prices"][0].update(unit_amount=0.1),
     r"\(calls\)\.unit_amount: 0\.1 is a float"),
    (lambda b: b["plans"][0]["versions"][0]["prices"][0].update(colour="red"),
     r"\(calls\)\.colour: unknown field"),
    (lambda b: b["plans"][0]["versions"][0].update(starting_at="2026-01-01"),
     r"versions\[0\] \(version 1\)\.starting_at: time"),
    (lambda b: b["plans"][0]["versions"][0].update(ending_before="2025-01-01T00:00:00Z"),
     r"\(version 1\)\.ending_before: must be after starting_at"),
    (lambda b: b["plans"][0]["versions"][0].update(minimum="1.001"),
     r"\(version 1\)\.minimum: 1\.001 is finer than the USD minor unit"),
    (lambda b: b["plans"][0]["versions"][0]["prices"].append(price(model="per_unit",
                                                                   unit_amount=1)),
     r"prices\[1\] \(calls\)\.id: duplicate price id"),
    (lambda b: b["assignments"].append({"subject": "acme", "plan": "p",
                                        "starting_at": "2026-06-01T00:00:00Z"}),
     r"assignments\[1\] \(acme\)\.starting_at: overlaps assignments\[0\]"),
    (lambda b: b["assignments"].append({"subject": "x", "plan": "q",
                                        "starting_at": "2026-06-01T00:00:00Z"}),
     r"assignments\[1\] \(x\)\.plan: no plan 'q'"),
    (lambda b: b["plans"][0]["versions"].append(
        {"version": 2, "starting_at": "2026-06-01T00:00:00Z",
         "prices": [price(model="per_unit", unit_amount=1)]}),
     r"versions \(version 2\)\.starting_at: overlaps version 1"),
])
def test_errors_name_the_item_and_field(mutate, message):
    book = price_book(price(model="per_unit", unit_amount=1))
    mutate(book)
    with pytest.raises(PriceBookError, match=message):
        parse_price_book(book)


@pytest.mark.parametrize("tiers, message", [
    ([{"up_to": 5, "unit_amount": 1}, {"up_to": 5, "unit_amount": 1}],
     r"tiers\[1\]\.up_to: must be above the previous tier's \(5\)"),
    ([{"up_to": None, "unit_amount": 1}, {"up_to": None, "unit_amount": 1}],
     r"tiers\[0\]\.up_to: only the last tier is unlimited"),
    ([{"unit_amount": 1}], r"tiers\[0\]\.up_to: required"),
    ([{"up_to": None}], r"tiers\[0\]: needs unit_amount, flat_amount or both"),
])
def test_tier_errors(tiers, message):
    with pytest.raises(PriceBookError, match=message):
        parse_price_book(price_book(price(model="graduated", tiers=tiers)))


def test_yaml_numbers_are_read_exactly_and_times_as_rfc3339():
    text = """
plans:
  - id: p
    currency: USD
    versions:
      - version: 1
        starting_at: 2026-01-01T00:00:00+01:00
        prices:
          - {id: calls, meter: calls, model: per_unit, unit_amount: 0.1000000000000000055511}
"""
    book = parse_price_book_text(text)
    version = book.plans[0].versions[0]
    assert version.prices[0].model.unit_amount == D("0.1000000000000000055511")
    assert version.starting_at == parse_rfc3339("2025-12-31T23:00:00Z")


def test_the_example_price_book_is_valid_for_the_example_catalog():
    book = load_price_book(str(ROOT / "tallyflow" / "examples" / "prices.yaml"))
    book.check_meters(load_catalog(str(EXAMPLE_METERS)))
    assert book.subjects_in(NOV, DEC) == ["cust-000", "cust-001", "cust-002", "cust-003"]


def test_a_price_on_an_unknown_meter_or_dimension_is_named():
    catalog = load_catalog(str(EXAMPLE_METERS))
    with pytest.raises(PriceBookError, match=r"\(calls\)\.meter: no meter 'calls'"):
        parse_price_book(price_book(price(model="per_unit", unit_amount=1))).check_meters(catalog)
    matrix = price(meter="llm_input_tokens", model="matrix", dimensions=["region"],
                   cells=[{"values": {"region": "eu"}, "model": "per_unit", "unit_amount": 1}],
                   default={"model": "per_unit", "unit_amount": 1})
    with pytest.raises(PriceBookError, match=r"\.dimensions: region not a group-by key"):
        parse_price_book(price_book(matrix)).check_meters(catalog)


# ------------------------------------------------------------- properties

amounts = st.decimals(min_value=0, max_value=1000, places=4)
quantities = st.decimals(min_value=0, max_value=10 ** 6, places=9)


@st.composite
def tier_lists(draw):
    bounds = sorted(draw(st.sets(st.integers(1, 500), min_size=0, max_size=4)))
    return tuple(Tier(D(up_to) if up_to is not None else None, draw(amounts), draw(amounts))
                 for up_to in bounds + [None])


@given(tier_lists(), st.integers(0, 600))
@settings(max_examples=200, deadline=None)
def test_graduated_is_the_sum_over_its_tiers_unit_by_unit(tiers, quantity):
    lowers = [D(0)] + [t.up_to for t in tiers[:-1]]
    expected = tiers[0].flat_amount
    for unit in range(1, quantity + 1):  # unit n is in the tier whose range holds n
        index = max(i for i, lower in enumerate(lowers) if unit > lower)
        expected += tiers[index].unit_amount
    expected += sum((t.flat_amount for t, lower in zip(tiers[1:], lowers[1:])
                     if quantity > lower), D(0))
    assert graduated_amount(tiers, D(quantity)) == expected


@given(tier_lists(), quantities)
@settings(max_examples=200, deadline=None)
def test_volume_is_the_quantity_times_the_reached_tiers_price(tiers, quantity):
    reached = [t for t in tiers if t.up_to is None or quantity <= t.up_to][0]
    assert volume_amount(tiers, quantity) == quantity * reached.unit_amount + reached.flat_amount


@given(tier_lists(), st.lists(quantities, min_size=1, max_size=6), st.sampled_from(
    ["graduated", "volume", "per_unit", "package"]), st.integers(0, 50))
@settings(max_examples=200, deadline=None)
def test_splitting_a_period_into_windows_never_changes_its_amount(tiers, parts, kind, free):
    """Tier, package and allowance positions count the period, so windows add up exactly."""
    model = Model(kind, unit_amount=D("0.0031"), package_size=D(7), package_amount=D("1.25"),
                  tiers=tiers, free_units=D(free))
    total = sum(parts, D(0))
    charged, before = D(0), D(0)
    for index, part in enumerate(parts):
        amount = model.charge(before, part, 1, first=index == 0, last=index == len(parts) - 1,
                              total=total)
        assert isinstance(amount, D)
        charged += amount
        before += part
    assert charged == model.amount(total)


@given(st.lists(st.tuples(st.sampled_from(["calls", "bytes", "amount"]), st.integers(0, 47),
                          quantities, st.integers(0, 9)), max_size=30))
@settings(max_examples=100, deadline=None)
def test_lines_round_once_and_the_total_is_the_sum_of_rounded_lines(rows):
    book = price_book(price(model="graduated", tiers=STRIPE_FLAT_TIERS),
                      price(meter="bytes", model="per_unit", unit_amount="0.000123"),
                      price(meter="amount", model="percentage", percent="1.3",
                            fixed_fee="0.003"), minimum="250")
    rated = rate(book, [usage(value, hour, meter, events) for meter, hour, value, events in rows])
    for line in rated.lines:
        assert all(not isinstance(v, float) for v in vars(line).values())
        assert line.amount == round_money(line.unrounded, "USD")
    total = sum(line.amount for line in rated.lines)
    assert total >= 250 and (total == 250 or all(line.kind == "usage" for line in rated.lines))


def test_floats_are_refused_by_the_math():
    with pytest.raises(TypeError, match="Decimals"):
        Model("per_unit", unit_amount=D(1)).amount(1.5)


# ------------------------------------------------------------- transform


def test_rate_subjects_transform():
    book = parse_price_book(price_book(price(model="per_unit", unit_amount="0.5"),
                                       subject="acme"))
    run = RatingRun("rate-1", NOV, DEC, revision=2, rated_ns=DEC)
    usage_rows = [{"subject": "acme", "meter": "calls", "dimensions": "{}",
                   "start_us": NOV // 1000, "value": D(7), "value_bignumeric": None,
                   "event_count": 7}]
    previous = [{"subject": "acme", "plan": "p", "plan_version": 1, "price_id": "calls",
                 "meter": "calls", "dimensions": "{}", "model": "per_unit", "kind": "usage",
                 "quantity": D(6), "event_count": 6, "unrounded_amount": "3.0",
                 "amount": D("3.00"), "currency": "USD"}]
    with TestPipeline() as p:
        rated = ((p | "U" >> beam.Create(usage_rows), p | "P" >> beam.Create(previous),
                  p | "S" >> beam.Create(["acme"])) | RateSubjects(book, run))
        lines = rated["lines"] | "L" >> beam.Map(
            lambda keyed: (keyed[1]["line_type"], keyed[1]["quantity"], keyed[1]["amount"],
                           keyed[1]["previous_amount"]))
        invoices = rated["invoices"] | "I" >> beam.Map(
            lambda keyed: (keyed[1]["total"], keyed[1]["previous_total"],
                           keyed[1]["adjustment"]))
        assert_that(lines, equal_to([("charge", "7", "3.5", None), ("debit", "1", "0.5", "3")]),
                    label="lines")
        assert_that(invoices, equal_to([("3.5", "3", "0.5")]), label="invoices")
        diff = rated["diff"] | "D" >> beam.Map(
            lambda text: (json.loads(text)["old_amount"], json.loads(text)["new_amount"]))
        assert_that(diff, equal_to([("3", "3.5")]), label="diff")


def test_adjustment_differences_keep_their_types():
    book = price_book(price(model="graduated", tiers=STRIPE_FLAT_TIERS))
    (kind, line, before), = adjustments([], list(rate(book, []).lines))
    assert (kind, before) == ("debit", None)
    assert type(line.event_count) is int and type(line.quantity) is D


@pytest.mark.parametrize("amount", ["\u0661\u0662", "\u0661.5", "\uff11", "1\u0660"])
def test_amounts_read_ascii_digits_only_like_event_values(amount):
    """One decimal grammar: Python's Decimal reads Arabic-Indic and fullwidth digits,
    the event parser rejects them, and so does the price book."""
    with pytest.raises(PriceBookError, match="is not a decimal number"):
        parse_price_book(price_book(price(model="per_unit", unit_amount=amount)))
