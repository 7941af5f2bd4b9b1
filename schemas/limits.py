"""Usage limits: thresholds on period-to-date usage, and the billing periods they count in
(docs/limits.md).

A limits file gives a plan, or one customer, a list of thresholds per meter:
absolute quantities, or percentages of the quantity the plan includes (the
`free_units` of the plan's price for the meter, or an explicit `included`).
A customer's own entry for a meter replaces its plan's. Billing periods are
UTC calendar months unless a customer (or every customer of a plan) has an
`anchor_day`: then a period starts at 00:00 UTC on that day of each month
(on the month's last day when it is shorter).

Validated on load, against the meter catalog and the price book, with errors
that name the entry and the field. Pure data and functions: no Beam, no I/O.
"""
from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from hashlib import blake2b

import yaml

from schemas.catalog import MeterCatalog
from schemas.pricing import PriceBook
from schemas.pricing import _Loader as DecimalLoader  # YAML numbers as Decimals, no floats
from schemas.values import DECIMAL_TEXT, EXACT, NS, format_decimal

ZERO = Decimal(0)
HUNDRED = Decimal(100)
# A period limit sums the windows of additive meters and takes the greatest window of
# MAX; the others have no period value the windows' panes can give (docs/limits.md).
PERIOD_AGGREGATIONS = {"SUM": "sum", "COUNT": "sum", "MAX": "max"}
REFUSED = {
    "MIN": "a period minimum only falls as windows arrive, so it never crosses an upper "
           "threshold for good",
    "LATEST": "the period's latest value is a gauge, not usage to date",
    "UNIQUE_COUNT": "distinct values are not additive across windows (the same value in two "
                    "windows counts once in the period), and panes carry counts, not values",
}
MAX_ANCHOR_DAY = 31


class LimitsError(ValueError):
    """The limits file is invalid; the message names the entry and the field."""


@dataclass(frozen=True)
class Threshold:
    """As written: an absolute quantity, or `percent` of the included quantity."""

    label: str                   # "80%" or "1000": identifies it in a period
    quantity: Decimal | None = None
    percent: Decimal | None = None


@dataclass(frozen=True)
class Level:
    """A threshold resolved for one customer and window: the quantity that crosses it."""

    label: str
    quantity: Decimal


@dataclass(frozen=True)
class Limit:
    plan: str | None
    subject: str | None
    meter: str
    thresholds: tuple[Threshold, ...]
    included: Decimal | None = None


@dataclass(frozen=True)
class Anchor:
    plan: str | None
    subject: str | None
    anchor_day: int


@dataclass(frozen=True)
class LimitBook:
    limits: tuple[Limit, ...]
    anchors: tuple[Anchor, ...] = ()
    meters: frozenset = field(default=frozenset())

    def _plan(self, prices: PriceBook, subject: str, instant: int) -> str | None:
        assignment = prices.assignment_at(subject, instant)
        return assignment and assignment.plan

    def limit_for(self, prices: PriceBook, subject: str, meter: str,
                  instant: int) -> Limit | None:
        """The customer's own entry for the meter, else its plan's (at `instant`)."""
        plan = self._plan(prices, subject, instant)
        own = [lim for lim in self.limits if lim.meter == meter and lim.subject == subject]
        return next(iter(own or [lim for lim in self.limits
                                 if lim.meter == meter and plan and lim.plan == plan]), None)

    def levels(self, prices: PriceBook, subject: str, meter: str,
               instant: int) -> tuple[Level, ...]:
        """The thresholds in effect at `instant`, by quantity (then label)."""
        limit = self.limit_for(prices, subject, meter, instant)
        if limit is None:
            return ()
        included = limit.included
        if included is None and any(t.percent is not None for t in limit.thresholds):
            included = included_quantity(prices, self._plan(prices, subject, instant), meter,
                                         instant)
        levels = []
        for t in limit.thresholds:
            if t.quantity is not None:
                levels.append(Level(t.label, t.quantity))
            elif included is not None:
                levels.append(Level(t.label, EXACT.divide(EXACT.multiply(included, t.percent),
                                                          HUNDRED)))
        return tuple(sorted(levels, key=lambda level: (level.quantity, level.label)))

    def anchor_day(self, prices: PriceBook, subject: str, instant: int) -> int | None:
        """The customer's own anchor day, else its plan's (None: calendar months)."""
        days = {(a.plan, a.subject): a.anchor_day for a in self.anchors}
        plan = self._plan(prices, subject, instant)
        return days.get((None, subject)) or days.get((plan, None))

    def period(self, prices: PriceBook, subject: str, instant: int) -> tuple[int, int]:
        return billing_period(instant, self.anchor_day(prices, subject, instant))


def included_quantity(prices: PriceBook, plan_id: str | None, meter: str,
                      instant: int) -> Decimal | None:
    """The `free_units` of the plan's price for the meter at `instant` (None: no plan,
    no price, a matrix price, or nothing included)."""
    if plan_id is None:
        return None
    version = prices.plan(plan_id).version_at(instant)
    price = version and version.price_for(meter)
    if price is None or price.dimensions or not price.model.free_units:
        return None
    return price.model.free_units


# ----------------------------------------------------------- periods


def _month_start(year: int, month: int, day: int) -> int:
    day = min(day, calendar.monthrange(year, month)[1])
    moment = dt.datetime(year, month, day, tzinfo=dt.timezone.utc)
    return calendar.timegm(moment.timetuple()) * NS


def _shift(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + month - 1 + months
    return index // 12, index % 12 + 1


def billing_period(instant_ns: int, anchor_day: int | None = None) -> tuple[int, int]:
    """The billing period [start, end) in ns holding `instant_ns`: the UTC calendar
    month, or the month from `anchor_day` (clamped to shorter months' last day)."""
    day = anchor_day or 1
    when = dt.datetime.fromtimestamp(instant_ns // NS, dt.timezone.utc)
    year, month = when.year, when.month
    start = _month_start(year, month, day)
    if instant_ns < start:
        year, month = _shift(year, month, -1)
        start = _month_start(year, month, day)
    return start, _month_start(*_shift(year, month, 1), day)


# ----------------------------------------------------------- crossings


def period_value(aggregation: str, windows) -> Decimal:
    """Period-to-date usage from the latest value of each window (and dimensions)."""
    values = list(windows)
    if PERIOD_AGGREGATIONS[aggregation] == "max":
        return max(values, default=ZERO)
    total = ZERO
    for value in values:
        total = EXACT.add(total, value)
    return total


def window_change(aggregation: str, before: Decimal | None, after: Decimal) -> Decimal:
    """What a window's new value contributes to its period: the difference from the
    window's previous value for sums, the value itself for MAX (`apply_change`)."""
    if PERIOD_AGGREGATIONS[aggregation] == "max":
        return after
    return EXACT.subtract(after, before or ZERO)


def apply_change(aggregation: str, usage: Decimal, change: Decimal) -> Decimal:
    """The period's usage after a window's `window_change`: in any order, the changes
    of all windows give `period_value` of their latest values."""
    if PERIOD_AGGREGATIONS[aggregation] == "max":
        return max(usage, change)
    return EXACT.add(usage, change)


def newly_crossed(levels, value: Decimal, alerted) -> list[Level]:
    """Levels `value` reaches (>=) that have not alerted yet in the period, lowest first:
    one pane that jumps several thresholds crosses each of them, in order."""
    return [level for level in levels if level.label not in alerted and value >= level.quantity]


def alert_id(subject: str, meter: str, period_start: str, threshold: str) -> str:
    """Deterministic: one alert per customer, meter, period and threshold, whichever job,
    pane or redelivery raised it, so consumers can deduplicate on it."""
    text = "\x1f".join(("alert", subject, meter, period_start, threshold))
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


# ----------------------------------------------------------- loading


def parse_limits_text(text: str, catalog: MeterCatalog, prices: PriceBook,
                      name: str = "limits") -> LimitBook:
    """Validates limits YAML; errors start with `name` (usually the file)."""
    try:
        document = yaml.load(text, Loader=DecimalLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise LimitsError(f"{name}: not valid YAML: {e}") from None
    try:
        return parse_limits(document, catalog, prices)
    except LimitsError as e:
        raise LimitsError(f"{name}: {e}") from None


def parse_limits(document, catalog: MeterCatalog, prices: PriceBook) -> LimitBook:
    if not isinstance(document, dict) or not isinstance(document.get("limits"), list):
        raise LimitsError("the limits file must be a mapping with a list under 'limits'")
    _fields("", document, {"limits", "billing_periods"})
    aggregations = {m.key: m.aggregation for m in catalog.meters}
    limits, seen = [], set()
    for index, spec in enumerate(document["limits"]):
        limit = _parse_limit(f"limits[{index}]", spec, aggregations, prices)
        key = (limit.plan, limit.subject, limit.meter)
        if key in seen:
            raise LimitsError(f"limits[{index}] ({_owner(limit)}, meter {limit.meter}).meter: "
                              "a second entry for this meter; list all its thresholds in one")
        seen.add(key)
        limits.append(limit)
    periods = document.get("billing_periods") or []
    if not isinstance(periods, list):
        raise LimitsError("billing_periods: must be a list")
    anchors, owners = [], set()
    for index, spec in enumerate(periods):
        anchor = _parse_anchor(f"billing_periods[{index}]", spec, prices)
        if (anchor.plan, anchor.subject) in owners:
            raise LimitsError(f"billing_periods[{index}] ({_owner(anchor)}): a second billing "
                              "period for it")
        owners.add((anchor.plan, anchor.subject))
        anchors.append(anchor)
    return LimitBook(tuple(limits), tuple(anchors), frozenset(lim.meter for lim in limits))


def _owner(item) -> str:
    return f"plan {item.plan}" if item.plan else f"subject {item.subject}"


def _parse_owner(where: str, spec, prices: PriceBook) -> tuple[str | None, str | None]:
    """The entry's plan or subject (exactly one), once it is known to be a mapping."""
    if not isinstance(spec, dict):
        raise LimitsError(f"{where}: must be a mapping")
    plan, subject = spec.get("plan"), spec.get("subject")
    if (plan is None) == (subject is None):
        raise LimitsError(f"{where}: give exactly one of plan or subject")
    if plan is not None and plan not in {p.id for p in prices.plans}:
        raise LimitsError(f"{where}.plan: no plan {plan!r} in the price book")
    if subject is not None and (not isinstance(subject, str) or not 1 <= len(subject) <= 256):
        raise LimitsError(f"{where}.subject: the customer id (1-256 characters)")
    return plan, subject


def _parse_limit(where: str, spec, aggregations: dict, prices: PriceBook) -> Limit:
    plan, subject = _parse_owner(where, spec, prices)
    meter = spec.get("meter")
    where = f"{where} ({'plan ' + plan if plan else 'subject ' + subject}, meter {meter})"
    _fields(where, spec, {"plan", "subject", "meter", "thresholds", "included"})
    if meter not in aggregations:
        raise LimitsError(f"{where}.meter: no meter {meter!r} in the catalog")
    if aggregations[meter] in REFUSED:
        raise LimitsError(f"{where}.meter: a period limit on a {aggregations[meter]} meter "
                          f"is refused: {REFUSED[aggregations[meter]]}")
    included = spec.get("included")
    if included is not None:
        included = _quantity(f"{where}.included", included)
    raw = spec.get("thresholds")
    if not isinstance(raw, list) or not raw:
        raise LimitsError(f"{where}.thresholds: required; a list like [50%, 80%, 100%] or "
                          "absolute quantities")
    thresholds, labels = [], set()
    for index, value in enumerate(raw):
        threshold = _parse_threshold(f"{where}.thresholds[{index}]", value)
        if threshold.label in labels:
            raise LimitsError(f"{where}.thresholds[{index}]: {threshold.label} is listed twice")
        labels.add(threshold.label)
        thresholds.append(threshold)
    limit = Limit(plan, subject, meter, tuple(thresholds), included)
    if included is None and any(t.percent is not None for t in thresholds):
        _check_included(where, limit, prices)
    return limit


def _check_included(where: str, limit: Limit, prices: PriceBook) -> None:
    """A percentage needs an included quantity in every plan version it can meet."""
    plans = [limit.plan] if limit.plan else sorted(
        {a.plan for a in prices.by_subject.get(limit.subject, ())})
    if not plans:
        raise LimitsError(f"{where}.included: required for a percentage: subject "
                          f"{limit.subject} has no plan in the price book")
    for plan_id in plans:
        for version in prices.plan(plan_id).versions:
            if included_quantity(prices, plan_id, limit.meter, version.starting_at) is None:
                raise LimitsError(
                    f"{where}.included: required for a percentage: plan {plan_id} version "
                    f"{version.version} includes no quantity of {limit.meter} (no "
                    f"free_units on a single-model price)")


def _parse_threshold(where: str, value) -> Threshold:
    if isinstance(value, str) and value.strip().endswith("%"):
        number = value.strip()[:-1].strip()
        percent = _quantity(where, number)
        return Threshold(f"{format_decimal(percent)}%", percent=percent)
    quantity = _quantity(where, value)
    return Threshold(format_decimal(quantity), quantity=quantity)


def _quantity(where: str, value) -> Decimal:
    if isinstance(value, float):
        raise LimitsError(f"{where}: {value!r} is a float; write a decimal number")
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise LimitsError(f"{where}: must be a positive decimal number or a percentage like "
                          f"80%, got {value!r}")
    if isinstance(value, str) and not DECIMAL_TEXT.match(value.strip()):
        raise LimitsError(f"{where}: {value!r} is not a decimal number or a percentage")
    number = Decimal(value.strip() if isinstance(value, str) else value)
    if not number.is_finite() or number <= 0:
        raise LimitsError(f"{where}: must be positive, got {value}")
    return number


def _parse_anchor(where: str, spec, prices: PriceBook) -> Anchor:
    plan, subject = _parse_owner(where, spec, prices)
    where = f"{where} ({'plan ' + plan if plan else 'subject ' + subject})"
    _fields(where, spec, {"plan", "subject", "anchor_day"})
    day = spec.get("anchor_day")
    if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= MAX_ANCHOR_DAY:
        raise LimitsError(f"{where}.anchor_day: required; the day of the month a period "
                          f"starts on, 1-{MAX_ANCHOR_DAY} (the last day in shorter months)")
    return Anchor(plan, subject, day)


def _fields(where: str, spec: dict, allowed: set) -> None:
    for name in sorted(set(spec) - allowed, key=str):
        raise LimitsError(f"{where}{'.' if where else ''}{name}: unknown field")
