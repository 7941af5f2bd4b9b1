"""The price book and the exact pricing math (docs/pricing.md).

A price book says what usage costs: plans, each with dated versions (UTC,
`starting_at` inclusive, `ending_before` exclusive) holding one price per
meter, and which plan each customer is on when (assignments, dated the same
way). It is validated on load, like the meter catalog, with errors that name
the plan, version, price and field.

Every amount is a `decimal.Decimal` computed in `EXACT` (a context that raises
instead of rounding); the only rounding is `round_money`, half-up to the
currency's minor unit, once per invoice line. YAML numbers are read as
Decimals from their text, never through floats.

`rate_subject` turns one customer's usage windows of a period into invoice
lines; `adjustments` compares two revisions of lines. Both are pure functions.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation, Overflow
from enum import StrEnum

import yaml

from schemas.values import DECIMAL_TEXT, EXACT, format_decimal, format_time, parse_rfc3339


class PriceModel(StrEnum):
    """How a price turns a quantity into an amount (docs/pricing.md); each member is its
    name as the price book spells it, so it compares and serialises as that text."""

    PER_UNIT = "per_unit"
    PACKAGE = "package"
    GRADUATED = "graduated"
    VOLUME = "volume"
    PERCENTAGE = "percentage"
    MATRIX = "matrix"


MODELS = tuple(PriceModel)
CELL_MODELS = MODELS[:-1]  # what a matrix cell or default can be
LINE_KINDS = ("usage", "minimum", "maximum")
ZERO = Decimal(0)

# ISO 4217 minor units of the currencies a plan may bill in.
MINOR_UNITS = {
    **dict.fromkeys(("AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "INR",
                     "MXN", "NOK", "NZD", "PLN", "SEK", "SGD", "USD", "ZAR"), 2),
    **dict.fromkeys(("CLP", "ISK", "JPY", "KRW", "VND"), 0),
    **dict.fromkeys(("BHD", "JOD", "KWD", "OMR", "TND"), 3),
}

# The one context that may round: quantize to a currency's minor unit, half-up
# (ties away from zero, so a credit rounds like the debit it mirrors).
_MONEY = Context(prec=1000, Emax=999_999, Emin=-999_999, rounding=ROUND_HALF_UP,
                 traps=[InvalidOperation, Overflow])

_ID = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")


class PriceBookError(ValueError):
    """The price book is invalid; the message names the item and the field."""


# ------------------------------------------------------------------ money


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Half-up to the currency's minor unit: the only rounding in tallyflow's billing."""
    return amount.quantize(Decimal(1).scaleb(-MINOR_UNITS[currency]), context=_MONEY)


def exact_sum(numbers) -> Decimal:
    """A sum that raises rather than rounds (the built-in `sum` rounds at 28 digits)."""
    total = ZERO
    for number in numbers:
        total = EXACT.add(total, number)
    return total


def billable(quantity: Decimal, free_units: Decimal) -> Decimal:
    """Quantity beyond a free allowance (never negative)."""
    return max(ZERO, EXACT.subtract(quantity, free_units))


# ------------------------------------------------------------- the models


@dataclass(frozen=True)
class Tier:
    """Units above the previous tier's `up_to`, up to and including this `up_to`
    (None: no limit). The first tier starts at 0. Usage beyond a bounded last
    tier is refused when rated."""

    up_to: Decimal | None
    unit_amount: Decimal = ZERO
    flat_amount: Decimal = ZERO


def graduated_amount(tiers: tuple[Tier, ...], quantity: Decimal) -> Decimal:
    """Each unit at the price of the tier it falls in, plus the flat fee of every
    tier reached (the first tier is reached at quantity 0)."""
    _check_within(tiers, quantity)
    total, lower = ZERO, ZERO
    for index, tier in enumerate(tiers):
        if index and quantity <= lower:
            break
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = max(ZERO, EXACT.subtract(top, lower))
        total = EXACT.add(total, EXACT.add(EXACT.multiply(units, tier.unit_amount),
                                           tier.flat_amount))
        if tier.up_to is None:
            break
        lower = tier.up_to
    return total


def volume_tier(tiers: tuple[Tier, ...], quantity: Decimal) -> Tier:
    """The tier the quantity falls in (`up_to` inclusive)."""
    _check_within(tiers, quantity)
    return next(t for t in tiers if t.up_to is None or quantity <= t.up_to)


def _check_within(tiers: tuple[Tier, ...], quantity: Decimal) -> None:
    """Usage beyond a bounded last tier has no price: refuse rather than guess."""
    last = tiers[-1].up_to
    if last is not None and quantity > last:
        raise ValueError(f"quantity {format_decimal(quantity)} is beyond the last tier "
                         f"(up_to {format_decimal(last)}); give the last tier up_to: null")


def volume_amount(tiers: tuple[Tier, ...], quantity: Decimal) -> Decimal:
    """Every unit at the price of the tier the whole quantity reaches, plus its flat fee."""
    tier = volume_tier(tiers, quantity)
    return EXACT.add(EXACT.multiply(quantity, tier.unit_amount), tier.flat_amount)


def package_count(quantity: Decimal, package_size: Decimal) -> Decimal:
    """Packages needed for the quantity: a started package counts whole."""
    whole, rest = EXACT.divmod(quantity, package_size)
    return EXACT.add(whole, 1) if rest else whole


@dataclass(frozen=True)
class Model:
    """How one quantity is priced (a price, or one cell of a matrix price)."""

    kind: PriceModel  # given as text, kept as the member it names
    unit_amount: Decimal = ZERO          # per_unit
    package_size: Decimal = Decimal(1)   # package
    package_amount: Decimal = ZERO       # package
    tiers: tuple[Tier, ...] = ()         # graduated, volume
    percent: Decimal = ZERO              # percentage: of the usage value
    fixed_fee: Decimal = ZERO            # percentage: per event
    free_units: Decimal = ZERO           # every model but percentage

    def __post_init__(self):
        object.__setattr__(self, "kind", PriceModel(self.kind))

    def amount(self, quantity: Decimal, events: int = 0) -> Decimal:
        """The unrounded amount of a whole period's quantity under this model alone."""
        return self.charge(ZERO, quantity, events, first=True, last=True, total=quantity)

    def charge(self, before: Decimal, quantity: Decimal, events: int, *, first: bool,
               last: bool, total: Decimal) -> Decimal:
        """The unrounded amount of `quantity` units that follow `before` units of the same
        price in the period (tier and package position count the whole period).

        `first`: no earlier part of the period was charged (fees that apply at
        quantity 0 go here). `last`: no later part will be (a volume price's flat
        fee goes here). `total`: the period's whole quantity (a volume price's tier).
        """
        _no_floats(before, quantity, total)
        if self.kind == PriceModel.PERCENTAGE:
            return EXACT.add(EXACT.divide(EXACT.multiply(quantity, self.percent), 100),
                             EXACT.multiply(events, self.fixed_fee))
        start = billable(before, self.free_units)
        end = billable(EXACT.add(before, quantity), self.free_units)
        units = EXACT.subtract(end, start)
        if self.kind == PriceModel.PER_UNIT:
            return EXACT.multiply(units, self.unit_amount)
        if self.kind == PriceModel.PACKAGE:
            packages = EXACT.subtract(package_count(end, self.package_size),
                                      package_count(start, self.package_size))
            return EXACT.multiply(packages, self.package_amount)
        if self.kind == PriceModel.GRADUATED:
            done = ZERO if first else graduated_amount(self.tiers, start)
            return EXACT.subtract(graduated_amount(self.tiers, end), done)
        tier = volume_tier(self.tiers, billable(total, self.free_units))
        return EXACT.add(EXACT.multiply(units, tier.unit_amount),
                         tier.flat_amount if last else ZERO)


def _no_floats(*numbers) -> None:
    for number in numbers:
        if not isinstance(number, Decimal):
            raise TypeError(f"amounts and quantities are Decimals, got {type(number).__name__}")


@dataclass(frozen=True)
class Price:
    """The price of one meter in a plan version. `id` is stable across versions."""

    id: str
    meter: str
    model: Model | None = None           # every kind but matrix
    dimensions: tuple[str, ...] = ()     # matrix: the group-by keys it is keyed by
    cells: tuple[tuple[tuple, Model], ...] = ()  # matrix: (values per dimension, model)
    default: Model | None = None         # matrix: usage no cell matches
    minimum: Decimal | None = None       # per period: a true-up line up to it
    maximum: Decimal | None = None       # per period: a credit line down to it
    description: str = ""

    @property
    def kind(self) -> PriceModel:
        return PriceModel.MATRIX if self.dimensions else self.model.kind

    def cell(self, dimensions: dict) -> dict:
        """The usage row's dimensions this price is keyed by (a line per cell)."""
        return {name: dimensions.get(name) for name in self.dimensions}

    def model_for(self, cell: dict) -> Model:
        if not self.dimensions:
            return self.model
        values = tuple(cell.get(name) for name in self.dimensions)
        for cell_values, model in self.cells:
            if cell_values == values:
                return model
        return self.default

    def amount(self, quantity: Decimal, events: int = 0, dimensions: dict | None = None) -> Decimal:
        """The unrounded amount of a whole period's usage of one cell."""
        return self.model_for(self.cell(dimensions or {})).amount(quantity, events)


@dataclass(frozen=True)
class PlanVersion:
    version: int
    starting_at: int                 # ns, inclusive
    ending_before: int | None        # ns, exclusive; None: open-ended
    prices: tuple[Price, ...]
    minimum: Decimal | None = None   # per period, over the whole plan
    maximum: Decimal | None = None

    def covers(self, instant: int) -> bool:
        return _covers(self.starting_at, self.ending_before, instant)

    def price_for(self, meter: str) -> Price | None:
        for price in self.prices:
            if price.meter == meter:
                return price
        return None


@dataclass(frozen=True)
class Plan:
    id: str
    currency: str
    versions: tuple[PlanVersion, ...]  # by starting_at
    description: str = ""

    def version_at(self, instant: int) -> PlanVersion | None:
        for version in self.versions:
            if version.covers(instant):
                return version
        return None

    def version(self, number: int) -> PlanVersion:
        return next(v for v in self.versions if v.version == number)


@dataclass(frozen=True)
class Assignment:
    subject: str
    plan: str
    starting_at: int
    ending_before: int | None

    def covers(self, instant: int) -> bool:
        return _covers(self.starting_at, self.ending_before, instant)


def _covers(start: int, end: int | None, instant: int) -> bool:
    return start <= instant and (end is None or instant < end)


def _overlap(a_start, a_end, b_start, b_end) -> tuple[int, int] | None:
    """The intersection of two [start, end) spans (end None: unbounded), or None."""
    start = max(a_start, b_start)
    ends = [e for e in (a_end, b_end) if e is not None]
    end = min(ends) if ends else None
    return None if end is not None and end <= start else (start, end)


@dataclass(frozen=True)
class PriceBook:
    plans: tuple[Plan, ...]
    assignments: tuple[Assignment, ...]
    by_subject: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        for assignment in self.assignments:
            self.by_subject.setdefault(assignment.subject, []).append(assignment)

    def plan(self, plan_id: str) -> Plan:
        return next(p for p in self.plans if p.id == plan_id)

    def assignment_at(self, subject: str, instant: int) -> Assignment | None:
        for assignment in self.by_subject.get(subject, ()):
            if assignment.covers(instant):
                return assignment
        return None

    def subjects_in(self, start: int, end: int) -> list[str]:
        """Customers on a plan at some point of [start, end)."""
        return sorted({a.subject for a in self.assignments
                       if _overlap(a.starting_at, a.ending_before, start, end)})

    def check_meters(self, catalog) -> None:
        """Every price names a meter of the catalog, and matrix keys are its group-by keys."""
        keys = {m.key: {name for name, _ in m.group_by} for m in catalog.meters}
        for plan in self.plans:
            for version in plan.versions:
                for price in version.prices:
                    where = f"plans ({plan.id}).versions ({version.version}).prices ({price.id})"
                    if price.meter not in keys:
                        raise PriceBookError(f"{where}.meter: no meter {price.meter!r} in the "
                                             "catalog")
                    unknown = set(price.dimensions) - keys[price.meter]
                    if unknown:
                        raise PriceBookError(f"{where}.dimensions: {', '.join(sorted(unknown))}"
                                             f" not a group-by key of meter {price.meter}")


# ------------------------------------------------------------------ rating


@dataclass(frozen=True)
class UsageWindow:
    """One row of the `usage` view: a window's exact usage of a meter and dimensions."""

    meter: str
    dimensions: dict
    window_start: int  # ns
    value: Decimal
    event_count: int


@dataclass(frozen=True)
class Line:
    """An invoice line: the charge of one price, version and cell in the period, or a
    minimum or maximum of a price (`price_id` set) or of a whole plan (`price_id` None)."""

    subject: str
    plan: str
    plan_version: int
    price_id: str | None
    meter: str | None
    dimensions: str       # JSON object, sorted keys: the cell
    model: str | None
    kind: str             # usage, minimum or maximum
    quantity: Decimal | None
    event_count: int | None
    unrounded: Decimal
    amount: Decimal       # unrounded, rounded half-up to the minor unit
    currency: str

    @property
    def key(self) -> tuple:
        """What identifies the line from one revision to the next."""
        return (self.subject, self.currency, self.plan, self.plan_version, self.price_id or "",
                self.dimensions, self.kind)


@dataclass(frozen=True)
class Rated:
    lines: tuple[Line, ...]
    unpriced: Counter  # usage rows no price applied to, by reason


def rate_subject(book: PriceBook, subject: str, period_start: int, period_end: int,
                 usage: list[UsageWindow]) -> Rated:
    """One customer's invoice lines for [period_start, period_end).

    Each window is priced by the assignment and plan version in effect at its
    start. Per price and cell the windows run in time order and the tier (or
    package, or free allowance) position counts everything before them in the
    period, whichever version priced it; consecutive windows under one version
    make one line. A price in effect without usage gets a zero-quantity line
    (its fees at quantity 0 are charged). Minimums and maximums then add a line
    each, from the rounded lines, so totals land on them exactly.
    """
    unpriced: Counter = Counter()
    # (plan, price id, cell) -> window start -> [version, value, events]
    cells: dict[tuple, dict[int, list]] = {}
    for row in usage:
        if not period_start <= row.window_start < period_end:
            unpriced["outside_period"] += 1
            continue
        assignment = book.assignment_at(subject, row.window_start)
        if assignment is None:
            unpriced["no_plan_assigned"] += 1
            continue
        version = book.plan(assignment.plan).version_at(row.window_start)
        price = version and version.price_for(row.meter)
        if price is None:
            unpriced["no_plan_version" if version is None else "meter_not_priced"] += 1
            continue
        cell = json.dumps(price.cell(row.dimensions), sort_keys=True, ensure_ascii=False)
        window = cells.setdefault((assignment.plan, price.id, cell), {}).setdefault(
            row.window_start, [version.version, ZERO, 0])
        window[1] = EXACT.add(window[1], row.value)
        window[2] += row.event_count

    lines = []
    for (plan_id, price_id, cell), windows in sorted(cells.items()):
        lines += _cell_lines(book.plan(plan_id), price_id, cell, subject,
                             [windows[start] for start in sorted(windows)])
    lines += _unused_price_lines(book, subject, period_start, period_end,
                                 {(line.plan, line.price_id) for line in lines})
    return Rated(tuple(_with_limits(book, lines)), unpriced)


def _cell_lines(plan: Plan, price_id: str, cell: str, subject: str,
                windows: list[list]) -> list[Line]:
    segments: list[list] = []  # [version, quantity, events], consecutive windows merged
    for version, value, events in windows:
        if segments and segments[-1][0] == version:
            segments[-1][1] = EXACT.add(segments[-1][1], value)
            segments[-1][2] += events
        else:
            segments.append([version, value, events])
    total = exact_sum(quantity for _, quantity, _ in segments)
    lines, before = [], ZERO
    for index, (number, quantity, events) in enumerate(segments):
        price = next(p for p in plan.version(number).prices if p.id == price_id)
        unrounded = price.model_for(json.loads(cell)).charge(
            before, quantity, events, first=index == 0, last=index == len(segments) - 1,
            total=total)
        lines.append(_line(subject, plan, number, price, cell, "usage", quantity, events,
                           unrounded))
        before = EXACT.add(before, quantity)
    return lines


def _unused_price_lines(book: PriceBook, subject: str, start: int, end: int,
                        used: set) -> list[Line]:
    """A zero-quantity line for each price in effect that saw no usage, under the
    latest version of it in effect during the period."""
    latest: dict[tuple, tuple] = {}
    for assignment in book.by_subject.get(subject, ()):
        span = _overlap(assignment.starting_at, assignment.ending_before, start, end)
        if span is None:
            continue
        plan = book.plan(assignment.plan)
        for version in plan.versions:
            if _overlap(version.starting_at, version.ending_before, *span) is None:
                continue
            for price in version.prices:
                if (plan.id, price.id) not in used:
                    latest[(plan.id, price.id)] = (plan, version.version, price)
    lines = []
    for plan, number, price in (latest[key] for key in sorted(latest)):
        cell = price.cell({})
        unrounded = price.model_for(cell).amount(ZERO, 0)
        lines.append(_line(subject, plan, number, price,
                           json.dumps(cell, sort_keys=True), "usage", ZERO, 0, unrounded))
    return lines


def _line(subject, plan: Plan, version: int, price: Price | None, cell: str, kind: str,
          quantity, events, unrounded: Decimal) -> Line:
    return Line(subject=subject, plan=plan.id, plan_version=version,
                price_id=price and price.id, meter=price and price.meter, dimensions=cell,
                model=price and price.kind, kind=kind, quantity=quantity, event_count=events,
                unrounded=unrounded, amount=round_money(unrounded, plan.currency),
                currency=plan.currency)


def _with_limits(book: PriceBook, lines: list[Line]) -> list[Line]:
    """Adds minimum and maximum lines: per price, then per plan (over its price lines
    and their limits), each under the latest version of the period's lines."""
    with_prices = []
    by_price: dict[tuple, list[Line]] = {}
    for line in lines:
        by_price.setdefault((line.plan, line.price_id), []).append(line)
    for (plan_id, price_id), group in sorted(by_price.items()):
        with_prices += group
        latest = max(group, key=lambda line: line.plan_version)
        version = book.plan(plan_id).version(latest.plan_version)
        with_prices += _limit_lines(group, latest,
                                    next(p for p in version.prices if p.id == price_id))
    result = []
    by_plan: dict[str, list[Line]] = {}
    for line in with_prices:
        by_plan.setdefault(line.plan, []).append(line)
    for plan_id, group in sorted(by_plan.items()):
        result += group
        latest = max(group, key=lambda line: line.plan_version)
        version = book.plan(plan_id).version(latest.plan_version)
        result += _limit_lines(group, replace(latest, price_id=None, meter=None, model=None),
                               version)
    return result


def _limit_lines(group: list[Line], like: Line, limits) -> list[Line]:
    spent = exact_sum(line.amount for line in group)
    for kind, limit, applies in (("minimum", limits.minimum, lambda: spent < limits.minimum),
                                 ("maximum", limits.maximum, lambda: spent > limits.maximum)):
        if limit is not None and applies():
            difference = EXACT.subtract(limit, spent)
            return [replace(like, kind=kind, dimensions="{}", quantity=None, event_count=None,
                            unrounded=difference, amount=difference)]
    return []


def adjustments(previous: list[Line], current: list[Line]) -> list[tuple[str, Line, Line | None]]:
    """Per line key, the difference from the previous revision to this one, where the
    rounded amount changed: ("debit" | "credit", difference line, previous line or None).

    A line only in the previous revision is credited whole; one only in this
    revision is debited whole. Differences of rounded amounts, so they add up to
    the change of the invoice total exactly.
    """
    old = {line.key: line for line in previous}
    new = {line.key: line for line in current}
    changes = []
    for key in sorted(old.keys() | new.keys(), key=repr):
        before, after = old.get(key), new.get(key)
        base = after or before
        amount = EXACT.subtract(after.amount if after else ZERO,
                                before.amount if before else ZERO)
        if not amount:
            continue
        difference = replace(
            base,
            quantity=_difference(after and after.quantity, before and before.quantity),
            event_count=_difference(after and after.event_count, before and before.event_count),
            unrounded=EXACT.subtract(after.unrounded if after else ZERO,
                                     before.unrounded if before else ZERO),
            amount=amount)
        changes.append(("debit" if amount > 0 else "credit", difference, before))
    return changes


def _difference(new, old):
    """new - old of a quantity (Decimal) or event count (int); None when neither has one."""
    if new is None and old is None:
        return None
    if isinstance(new, Decimal) or isinstance(old, Decimal):
        return EXACT.subtract(new or ZERO, old or ZERO)
    return (new or 0) - (old or 0)


# ------------------------------------------------------------------ loading


class _Loader(yaml.SafeLoader):
    """YAML without floats or implicit timestamps: numbers with a fraction become
    Decimals from their text, times stay text (parsed as RFC 3339 here)."""


def _construct_decimal(loader, node):
    text = loader.construct_scalar(node).replace("_", "")
    return Decimal(text) if DECIMAL_TEXT.match(text) else text


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)
_Loader.add_constructor("tag:yaml.org,2002:timestamp",
                        lambda loader, node: loader.construct_scalar(node))


def load_price_book(path: str) -> PriceBook:
    with open(path, encoding="utf-8") as f:
        return parse_price_book_text(f.read(), path)


def parse_price_book_text(text: str, name: str = "price book") -> PriceBook:
    """Validates price book YAML; errors start with `name` (usually the file)."""
    try:
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise PriceBookError(f"{name}: not valid YAML: {e}") from None
    try:
        return parse_price_book(document)
    except PriceBookError as e:
        raise PriceBookError(f"{name}: {e}") from None


def parse_price_book(document) -> PriceBook:
    if not isinstance(document, dict) or not isinstance(document.get("plans"), list):
        raise PriceBookError("the price book must be a mapping with a list under 'plans'")
    _fields("", document, {"plans", "assignments"})
    plans, seen = [], set()
    for index, spec in enumerate(document["plans"]):
        plan = _parse_plan(f"plans[{index}]", spec)
        if plan.id in seen:
            raise PriceBookError(f"plans[{index}] ({plan.id}).id: duplicate plan id")
        seen.add(plan.id)
        plans.append(plan)
    assignments = document.get("assignments") or []
    if not isinstance(assignments, list):
        raise PriceBookError("assignments: must be a list")
    parsed = [_parse_assignment(f"assignments[{i}]", spec, seen)
              for i, spec in enumerate(assignments)]
    by_subject: dict[str, list] = {}
    for index, assignment in enumerate(parsed):
        for other_index, other in by_subject.get(assignment.subject, []):
            if _overlap(assignment.starting_at, assignment.ending_before, other.starting_at,
                        other.ending_before):
                raise PriceBookError(
                    f"assignments[{index}] ({assignment.subject}).starting_at: overlaps "
                    f"assignments[{other_index}]; a customer is on one plan at a time")
        by_subject.setdefault(assignment.subject, []).append((index, assignment))
    return PriceBook(tuple(plans), tuple(parsed))


def _fields(where: str, spec: dict, allowed: set) -> None:
    for name in sorted(set(spec) - allowed, key=str):
        raise PriceBookError(f"{where}{'.' if where else ''}{name}: unknown field")


def _mapping(where: str, spec) -> dict:
    if not isinstance(spec, dict):
        raise PriceBookError(f"{where}: must be a mapping")
    return spec


def _named(where: str, spec: dict, key: str = "id") -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not _ID.match(value):
        raise PriceBookError(f"{where}.{key}: required; lowercase letters, digits and _, "
                             "starting with a letter, at most 64 characters")
    return f"{where} ({value})"


def _parse_plan(where: str, spec) -> Plan:
    spec = _mapping(where, spec)
    where = _named(where, spec)
    _fields(where, spec, {"id", "currency", "versions", "description"})
    currency = spec.get("currency")
    if currency not in MINOR_UNITS:
        raise PriceBookError(f"{where}.currency: must be an ISO 4217 code tallyflow knows "
                             f"the minor unit of ({', '.join(sorted(MINOR_UNITS))}), "
                             f"got {currency!r}")
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        raise PriceBookError(f"{where}.versions: required; a list of at least one version")
    parsed = sorted((_parse_version(f"{where}.versions[{i}]", v, currency)
                     for i, v in enumerate(versions)), key=lambda v: v.starting_at)
    for earlier, later in zip(parsed, parsed[1:]):
        later_where = f"{where}.versions (version {later.version})"
        if later.version <= earlier.version:
            raise PriceBookError(f"{later_where}.version: versions must increase with "
                                 f"starting_at (version {earlier.version} starts earlier)")
        if earlier.ending_before is None or earlier.ending_before > later.starting_at:
            raise PriceBookError(f"{later_where}.starting_at: overlaps version "
                                 f"{earlier.version}; end it (ending_before) first")
    return Plan(spec["id"], currency, tuple(parsed), _text(where, spec, "description"))


def _parse_version(where: str, spec, currency: str) -> PlanVersion:
    spec = _mapping(where, spec)
    number = spec.get("version")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise PriceBookError(f"{where}.version: required; a positive integer")
    where = f"{where} (version {number})"
    _fields(where, spec, {"version", "starting_at", "ending_before", "prices", "minimum",
                          "maximum"})
    start, end = _span(where, spec)
    prices = spec.get("prices")
    if not isinstance(prices, list) or not prices:
        raise PriceBookError(f"{where}.prices: required; a list of at least one price")
    parsed, ids, meters = [], set(), set()
    for index, price_spec in enumerate(prices):
        price = _parse_price(f"{where}.prices[{index}]", price_spec, currency)
        price_where = f"{where}.prices[{index}] ({price.id})"
        if price.id in ids:
            raise PriceBookError(f"{price_where}.id: duplicate price id in the version")
        if price.meter in meters:
            raise PriceBookError(f"{price_where}.meter: {price.meter} already has a price in "
                                 "this version (a usage row would be billed twice)")
        ids.add(price.id)
        meters.add(price.meter)
        parsed.append(price)
    minimum, maximum = _limits(where, spec, currency)
    return PlanVersion(number, start, end, tuple(parsed), minimum, maximum)


def _span(where: str, spec: dict) -> tuple[int, int | None]:
    bounds = []
    for name in ("starting_at", "ending_before"):
        value = spec.get(name)
        if value is None and name == "ending_before":
            bounds.append(None)
            continue
        try:
            bounds.append(parse_rfc3339(value))
        except ValueError as e:
            raise PriceBookError(f"{where}.{name}: {'required; ' if value is None else ''}{e}")
    if bounds[1] is not None and bounds[1] <= bounds[0]:
        raise PriceBookError(f"{where}.ending_before: must be after starting_at "
                             f"({format_time(bounds[0])})")
    return bounds[0], bounds[1]


def _parse_price(where: str, spec, currency: str) -> Price:
    spec = _mapping(where, spec)
    where = _named(where, spec)
    meter = spec.get("meter")
    if not isinstance(meter, str) or not _ID.match(meter):
        raise PriceBookError(f"{where}.meter: required; the key of a meter in the catalog")
    minimum, maximum = _limits(where, spec, currency)
    common = {"id", "meter", "model", "minimum", "maximum", "description"}
    if spec.get("model") != PriceModel.MATRIX:
        model = _parse_model(where, spec, common)
        return Price(spec["id"], meter, model, minimum=minimum, maximum=maximum,
                     description=_text(where, spec, "description"))
    _fields(where, spec, common | {"dimensions", "cells", "default"})
    dimensions = spec.get("dimensions")
    if (not isinstance(dimensions, list) or not dimensions
            or not all(isinstance(d, str) for d in dimensions)
            or len(set(dimensions)) != len(dimensions)):
        raise PriceBookError(f"{where}.dimensions: required for matrix; a list of distinct "
                             "group-by keys of the meter")
    cells, seen = [], set()
    for index, cell in enumerate(spec.get("cells") or []):
        cell_where = f"{where}.cells[{index}]"
        cell = _mapping(cell_where, cell)
        values = _mapping(f"{cell_where}.values", cell.get("values"))
        if set(values) != set(dimensions):
            raise PriceBookError(f"{cell_where}.values: must give a value for each of "
                                 f"{', '.join(dimensions)}")
        key = tuple(_dimension_text(f"{cell_where}.values.{d}", values[d]) for d in dimensions)
        if key in seen:
            raise PriceBookError(f"{cell_where}.values: duplicate cell")
        seen.add(key)
        cells.append((key, _parse_model(cell_where, cell, {"values"})))
    if not cells:
        raise PriceBookError(f"{where}.cells: required for matrix; at least one cell")
    if spec.get("default") is None:
        raise PriceBookError(f"{where}.default: required for matrix; the price of usage no "
                             "cell matches")
    default = _parse_model(f"{where}.default", _mapping(f"{where}.default", spec["default"]),
                           set())
    return Price(spec["id"], meter, dimensions=tuple(dimensions), cells=tuple(cells),
                 default=default, minimum=minimum, maximum=maximum,
                 description=_text(where, spec, "description"))


_MODEL_FIELDS = {
    PriceModel.PER_UNIT: {"unit_amount", "free_units"},
    PriceModel.PACKAGE: {"package_size", "package_amount", "free_units"},
    PriceModel.GRADUATED: {"tiers", "free_units"},
    PriceModel.VOLUME: {"tiers", "free_units"},
    PriceModel.PERCENTAGE: {"percent", "fixed_fee"},
}


def _parse_model(where: str, spec: dict, other_fields: set) -> Model:
    kind = spec.get("model")
    if kind not in CELL_MODELS:
        allowed = MODELS if "meter" in other_fields else CELL_MODELS
        raise PriceBookError(f"{where}.model: must be one of {', '.join(allowed)}, got {kind!r}")
    _fields(where, spec, other_fields | {"model"} | _MODEL_FIELDS[kind])

    def amount(name: str, default=None, positive=False):
        if spec.get(name) is None:
            if default is None:
                raise PriceBookError(f"{where}.{name}: required for {kind}")
            return default
        return _decimal(f"{where}.{name}", spec[name], positive=positive)

    free_units = amount("free_units", ZERO)
    if kind == PriceModel.PER_UNIT:
        return Model(kind, unit_amount=amount("unit_amount"), free_units=free_units)
    if kind == PriceModel.PACKAGE:
        return Model(kind, package_size=amount("package_size", positive=True),
                     package_amount=amount("package_amount"), free_units=free_units)
    if kind == PriceModel.PERCENTAGE:
        if spec.get("percent") is None and spec.get("fixed_fee") is None:
            raise PriceBookError(f"{where}.percent: required for percentage (or fixed_fee)")
        return Model(kind, percent=amount("percent", ZERO), fixed_fee=amount("fixed_fee", ZERO))
    return Model(kind, tiers=_parse_tiers(f"{where}.tiers", spec.get("tiers")),
                 free_units=free_units)


def _parse_tiers(where: str, tiers) -> tuple[Tier, ...]:
    if not isinstance(tiers, list) or not tiers:
        raise PriceBookError(f"{where}: required; a list of tiers (the last usually up_to: null)")
    parsed, lower = [], ZERO
    for index, spec in enumerate(tiers):
        tier_where = f"{where}[{index}]"
        spec = _mapping(tier_where, spec)
        _fields(tier_where, spec, {"up_to", "unit_amount", "flat_amount"})
        if "up_to" not in spec:
            raise PriceBookError(f"{tier_where}.up_to: required (null for the last tier)")
        up_to = spec["up_to"]
        last = index == len(tiers) - 1
        if up_to is None and not last:
            raise PriceBookError(f"{tier_where}.up_to: only the last tier is unlimited")
        if up_to is not None:
            up_to = _decimal(f"{tier_where}.up_to", up_to, positive=True)
            if up_to <= lower:
                raise PriceBookError(f"{tier_where}.up_to: must be above the previous tier's "
                                     f"({format_decimal(lower)})")
            lower = up_to
        if spec.get("unit_amount") is None and spec.get("flat_amount") is None:
            raise PriceBookError(f"{tier_where}: needs unit_amount, flat_amount or both")
        parsed.append(Tier(up_to,
                           _decimal(f"{tier_where}.unit_amount", spec.get("unit_amount", 0)),
                           _decimal(f"{tier_where}.flat_amount", spec.get("flat_amount", 0))))
    return tuple(parsed)


def _limits(where: str, spec: dict, currency: str) -> tuple[Decimal | None, Decimal | None]:
    limits = []
    for name in ("minimum", "maximum"):
        value = spec.get(name)
        if value is not None:
            value = _decimal(f"{where}.{name}", value)
            if value != round_money(value, currency):
                raise PriceBookError(f"{where}.{name}: {format_decimal(value)} is finer than "
                                     f"the {currency} minor unit")
        limits.append(value)
    if None not in limits and limits[0] > limits[1]:
        raise PriceBookError(f"{where}.maximum: below the minimum")
    return limits[0], limits[1]


def _decimal(where: str, value, *, positive: bool = False) -> Decimal:
    if isinstance(value, float):
        raise PriceBookError(f"{where}: {value!r} is a float; write amounts as decimal "
                             "strings or YAML numbers")
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise PriceBookError(f"{where}: must be a decimal number, got {value!r}")
    if isinstance(value, str) and not DECIMAL_TEXT.match(value.strip()):
        raise PriceBookError(f"{where}: {value!r} is not a decimal number")
    number = Decimal(value.strip() if isinstance(value, str) else value)
    if number < 0 or (positive and number == 0):
        raise PriceBookError(f"{where}: must be {'positive' if positive else 'zero or more'}, "
                             f"got {format_decimal(number)}")
    return number


def _dimension_text(where: str, value) -> str | None:
    """A cell's dimension value, spelled as the usage rows spell it (schemas.catalog)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        return format_decimal(Decimal(value))
    raise PriceBookError(f"{where}: must be a string, number, boolean or null")


def _text(where: str, spec: dict, name: str) -> str:
    value = spec.get(name, "")
    if not isinstance(value, str):
        raise PriceBookError(f"{where}.{name}: must be a string")
    return value


def _parse_assignment(where: str, spec, plans: set) -> Assignment:
    spec = _mapping(where, spec)
    subject = spec.get("subject")
    if not isinstance(subject, str) or not 1 <= len(subject) <= 256:
        raise PriceBookError(f"{where}.subject: required; the customer id (1-256 characters)")
    where = f"{where} ({subject})"
    _fields(where, spec, {"subject", "plan", "starting_at", "ending_before"})
    if spec.get("plan") not in plans:
        raise PriceBookError(f"{where}.plan: no plan {spec.get('plan')!r} in the price book")
    start, end = _span(where, spec)
    return Assignment(subject, spec["plan"], start, end)
