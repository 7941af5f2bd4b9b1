"""Usage statement: one customer's usage for a period, per meter, in the terminal and as HTML.

`tallyflow statement --subject C --period-start T --period-end T` reads the
customer's rows of the `usage` view and prints, per meter, the period figure,
a per-day breakdown split into final (recomputed: changes only with a new
recompute revision) and provisional (streaming: may still change), and the
corrections; `--html FILE` also writes a self-contained page (no scripts, no
network) with an SVG chart per meter of usage over time, final and
provisional stacked, corrected days marked.

Period figures: SUM and COUNT meters add up (the total); for MAX and MIN the
period figure is the largest / smallest window value, for LATEST the value of
the latest window; UNIQUE_COUNT values cannot be combined across windows (a
user active in two hours is one user), so they have no period or daily
figure: see `tallyflow explain` for each window.

Corrections since the last statement: `--since T` is when the previous
statement was produced. A correction is a window of this period that a
recompute committed after T restated, with the figure now minus the figure
the `usage` view showed at T (the latest run committed by T covering the
window, else the latest streaming pane emitted by T). Without `--since`,
corrections are relative to the provisional (streamed) figures: what every
recompute changed. Nothing is stored: the statement is a pure function of the
tables and the times given.

Money next to usage (docs/pricing.md): when `invoice_lines` holds a rating
of the customer for exactly the statement's period, each meter shows its
rated amount and currency, and a Charges section lists them with the
invoice total from `invoices`. The figures are those of the latest revision
of the rating: the sum of that revision's `charge` lines (its debit and
credit lines are changes from the previous revision, already included in
its charges, so they are not added again), which is the revision's invoice
total. Lines of a plan's minimum or maximum have no meter and are listed on
their own. Without a rating the statement says "not rated yet".

Limits (docs/limits.md): a "Limits and alerts" section, the same figures in
the terminal and the page (tallyflow/reports/alerts.py), shows for each
limited meter and billing period overlapping the statement's period its usage
to date against its thresholds, and each alert's crossing and clearing.

Every query filters by the customer with a query parameter; nothing of
another customer is read into the statement. Exit status (the one error
policy, pipelines/policy.py): 2 on bad arguments or an unknown customer or
meter, 3 when a BigQuery call fails (naming the call) or on an unexpected
error (its type and where it happened).
"""
from __future__ import annotations

import argparse
import html
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from pipelines.options import add_period_arguments, parse_period
from pipelines.policy import run_command
from schemas.catalog import Meter, MeterCatalog
from schemas.pricing import MINOR_UNITS
from schemas.sql import CUSTOMER_USAGE, RATING_LINES, RATING_TOTALS, corrections
from schemas.values import EXACT, NS, format_decimal, format_time, parse_rfc3339, printable
from tallyflow.reports.data import (Dataset, Instant, add_dataset_arguments, load_meters,
                                    meter_of, ns_of, row_value)
from tallyflow.reports.alerts import (LIMITS_CSS, MeterLimits, add_limits_arguments,
                                      customer_limits, limits_html, limits_text)
from tallyflow.reports.explain import text_table
from transforms.bigquery_target import period_parameters

DAY_NS = 86400 * NS
ADDITIVE = ("SUM", "COUNT")
CHART_BY_DAY_FROM_NS = 7 * DAY_NS  # shorter periods chart each window


@dataclass
class Bucket:
    """Usage of one meter over a time span (a day, or a chart bucket)."""

    start_ns: int
    final: Decimal | None = None
    provisional: Decimal | None = None
    figure: Decimal | None = None  # the aggregation's figure over the span
    latest_ns: int = -1            # window of `figure` for LATEST
    correction: Decimal = Decimal(0)
    corrected_windows: int = 0

    @property
    def status(self) -> str:
        if self.final is not None and self.provisional is not None:
            return "mixed"
        return "final" if self.final is not None else "provisional"


@dataclass
class MeterStatement:
    meter: Meter
    total: Bucket
    days: list[Bucket] = field(default_factory=list)
    chart: list[Bucket] = field(default_factory=list)
    chart_step_ns: int = DAY_NS

    @property
    def additive(self) -> bool:
        return self.meter.aggregation in ADDITIVE

    @property
    def combinable(self) -> bool:
        return self.meter.aggregation != "UNIQUE_COUNT"


@dataclass
class Correction:
    meter: str
    dimensions: str
    window_start_ns: int
    before: Decimal | None
    now: Decimal | None
    revision: int
    run_id: str
    reason: str
    committed_ns: int

    @property
    def delta(self) -> Decimal:
        return EXACT.subtract(self.now or Decimal(0), self.before or Decimal(0))


@dataclass
class Rating:
    """The latest revision of the customer's rating of exactly the statement's period."""

    revision: int
    run_id: str
    charges: dict[tuple[str, str], Decimal]        # (meter, currency) -> sum of charge lines
    plan_lines: dict[tuple[str, str], Decimal]     # (kind, currency): a plan's minimum/maximum
    invoice_totals: dict[str, Decimal]             # currency -> invoices.total

    def of_meter(self, key: str) -> list[tuple[str, Decimal]]:
        return [(currency, amount) for (meter, currency), amount in sorted(self.charges.items())
                if meter == key]


@dataclass
class Statement:
    subject: str
    start_ns: int
    end_ns: int
    since_ns: int | None
    as_of_ns: int
    meters: list[MeterStatement]
    corrections: list[Correction]
    rating: Rating | None = None
    limits: list[MeterLimits] = field(default_factory=list)


# ---------------------------------------------------------------- reading


def build_statement(data: Dataset, catalog: MeterCatalog, subject: str, start_ns: int,
                    end_ns: int, since_ns: int | None = None,
                    meter_keys: list[str] | None = None) -> Statement:
    chosen = [meter_of(catalog, key) for key in meter_keys] if meter_keys else None
    data.require_subject(subject)
    period = period_parameters(start_ns, end_ns)
    current = data.query(CUSTOMER_USAGE, period, subject=subject)
    corrected = data.query(corrections(since_ns is not None), period, subject=subject,
                           **({} if since_ns is None else {"since": Instant(since_ns)}))
    statement = assemble(catalog, subject, start_ns, end_ns, since_ns, current, corrected,
                         chosen)
    rating_lines = data.query(RATING_LINES, period, subject=subject)
    totals = []
    if rating_lines:
        totals = data.query(RATING_TOTALS, period, subject=subject,
                            revision=max(int(r["revision"]) for r in rating_lines))
    statement.rating = rating_of(rating_lines, totals)
    return statement


def rating_of(lines: list[dict], invoices: list[dict]) -> Rating | None:
    """The customer's latest revision (pure). Every revision holds the complete `charge`
    lines of the customer; its `debit`/`credit` lines are the change from the previous
    revision, so only the latest revision's charges are summed (adding the adjustments,
    or earlier revisions, would count the changes twice)."""
    if not lines:
        return None
    revision = max(int(r["revision"]) for r in lines)
    latest = [r for r in lines if int(r["revision"]) == revision]
    charges: dict[tuple[str, str], Decimal] = {}
    plan_lines: dict[tuple[str, str], Decimal] = {}
    for row in latest:
        if row["line_type"] != "charge":
            continue
        into, key = ((charges, (row["meter"], row["currency"])) if row["meter"] is not None
                     else (plan_lines, (row["kind"], row["currency"])))
        into[key] = EXACT.add(into.get(key, Decimal(0)), Decimal(row["amount"]))
    totals = {}
    for row in invoices:
        if int(row["revision"]) == revision:
            totals[row["currency"]] = EXACT.add(totals.get(row["currency"], Decimal(0)),
                                                Decimal(row["total"]))
    return Rating(revision, str(latest[0]["run_id"]), charges, plan_lines, totals)


def assemble(catalog: MeterCatalog, subject: str, start_ns: int, end_ns: int,
             since_ns: int | None, current: list[dict], corrected: list[dict],
             chosen: list[Meter] | None = None) -> Statement:
    """The statement from the query results (pure)."""
    corrections = _corrections(corrected)
    corrected = {}
    for c in corrections:
        corrected.setdefault((c.meter, c.window_start_ns), []).append(c)
    by_meter: dict[str, list[dict]] = {}
    for row in current:
        by_meter.setdefault(row["meter"], []).append(row)
    meters = chosen or [m for m in catalog.meters if m.key in by_meter]
    step = _chart_step(current, start_ns, end_ns)
    statements = []
    for meter in meters:
        rows = by_meter.get(meter.key, [])
        total = Bucket(start_ns)
        days: dict[int, Bucket] = {}
        chart: dict[int, Bucket] = {}
        for row in rows:
            window = ns_of(row["window_start"])
            for bucket in (total, _bucket(days, window, DAY_NS), _bucket(chart, window, step)):
                _add(bucket, meter, row, window)
        for (key, window), found in corrected.items():
            if key != meter.key:
                continue
            for bucket in (total, _bucket(days, window, DAY_NS), _bucket(chart, window, step)):
                for c in found:
                    bucket.correction = EXACT.add(bucket.correction, c.delta)
                bucket.corrected_windows += len(found)
        statements.append(MeterStatement(meter, total, [days[d] for d in sorted(days)],
                                         _all_buckets(chart, start_ns, end_ns, step), step))
    keys = {m.key for m in meters}
    return Statement(subject, start_ns, end_ns, since_ns, time.time_ns(), statements,
                     [c for c in corrections if c.meter in keys])


def _chart_step(current: list[dict], start_ns: int, end_ns: int) -> int:
    if end_ns - start_ns >= CHART_BY_DAY_FROM_NS or not current:
        return DAY_NS
    return min(ns_of(r["window_end"]) - ns_of(r["window_start"]) for r in current)


def _bucket(buckets: dict, window_ns: int, step_ns: int) -> Bucket:
    start = window_ns - window_ns % step_ns
    if start not in buckets:
        buckets[start] = Bucket(start)
    return buckets[start]


def _all_buckets(buckets: dict, start_ns: int, end_ns: int, step_ns: int) -> list[Bucket]:
    first = start_ns - start_ns % step_ns
    return [buckets.get(t) or Bucket(t) for t in range(first, end_ns, step_ns)]


def _add(bucket: Bucket, meter: Meter, row: dict, window_ns: int) -> None:
    value = row_value(row)
    side = "final" if row["origin"] == "recompute" else "provisional"
    aggregation = meter.aggregation
    if aggregation in ADDITIVE:
        setattr(bucket, side, EXACT.add(getattr(bucket, side) or Decimal(0), value))
        bucket.figure = EXACT.add(bucket.figure or Decimal(0), value)
        return
    setattr(bucket, side, getattr(bucket, side) or Decimal(0))  # marks the status only
    if aggregation == "MAX":
        bucket.figure = value if bucket.figure is None else max(bucket.figure, value)
    elif aggregation == "MIN":
        bucket.figure = value if bucket.figure is None else min(bucket.figure, value)
    elif aggregation == "LATEST" and window_ns >= bucket.latest_ns:
        bucket.figure, bucket.latest_ns = value, window_ns


def _corrections(corrected: list[dict]) -> list[Correction]:
    """The windows restated since `since` (rows of `schemas.sql.corrections`) whose
    figure changed: the figure now vs the figure then."""
    found = []
    for row in corrected:
        before = row_value(_prefixed(row, "was_")) if row["was_found"] else None
        after = row_value(_prefixed(row, "now_")) if row["now_found"] else None
        if (before or Decimal(0)) != (after or Decimal(0)) or (before is None) != (after is None):
            found.append(Correction(row["meter"], row["dimensions"], ns_of(row["window_start"]),
                                    before, after, row["revision"], row["run_id"],
                                    row["reason"] or "", ns_of(row["committed_at"])))
    return found


def _prefixed(row: dict, prefix: str) -> dict:
    return {"value": row[f"{prefix}value"], "value_bignumeric": row[f"{prefix}value_bignumeric"]}


# ---------------------------------------------------------------- terminal


def _figure(value: Decimal | None) -> str:
    return "-" if value is None else format_decimal(value)


def _signed(value: Decimal) -> str:
    text = format_decimal(value)
    return text if text.startswith("-") else "+" + text


def money(amount: Decimal, currency: str) -> str:
    """A rounded amount with its currency's minor unit shown: 2.5 USD -> '2.50 USD'."""
    minor = MINOR_UNITS.get(currency)
    plain = amount.normalize(EXACT)
    if minor is not None and plain.as_tuple().exponent >= -minor:  # exact: adds zeros only
        return f"{plain.quantize(Decimal(1).scaleb(-minor), context=EXACT):f} {currency}"
    return f"{format_decimal(amount)} {currency}"


def _meter_money(s: Statement, key: str) -> str:
    if s.rating is None:
        return "not rated yet"
    found = s.rating.of_meter(key)
    return ", ".join(money(a, c) for c, a in found) if found else "not rated"


def _charge_rows(s: Statement) -> list[tuple[str, str]]:
    """(item, amount) rows of the Charges section: meters, plan limits, invoice totals."""
    r = s.rating
    rows = [(meter, money(amount, currency)) for (meter, currency), amount
            in sorted(r.charges.items())
]
    rows += [(f"plan {kind}", money(amount, currency))
             for (kind, currency), amount in sorted(r.plan_lines.items())]
    rows += [("invoice total", money(total, currency))
             for currency, total in sorted(r.invoice_totals.items())]
    return rows


def render_text(s: Statement) -> str:
    since = (f"since {format_time(s.since_ns)}" if s.since_ns is not None
             else "since the provisional figures")
    out = [f"Usage statement for {s.subject}",
           f"period {format_time(s.start_ns)} .. {format_time(s.end_ns)}, "
           f"as of {format_time(s.as_of_ns - s.as_of_ns % NS)}",
           "final: recomputed, changes only with a new revision; provisional: streamed, "
           "may still change", ""]
    for m in s.meters:
        unit = f", {m.meter.unit}" if m.meter.unit else ""
        head = f"{m.meter.key} ({m.meter.aggregation}{unit})"
        if m.additive:
            out.append(f"{head}  total {_figure(m.total.figure)}  (final "
                       f"{_figure(m.total.final or Decimal(0))}, provisional "
                       f"{_figure(m.total.provisional or Decimal(0))})")
            rows = [("day", "final", "provisional", "total", "corrections")] + [
                (format_time(d.start_ns)[:10], _figure(d.final or Decimal(0)),
                 _figure(d.provisional or Decimal(0)), _figure(d.figure),
                 _correction_text(d)) for d in m.days]
        elif m.combinable:
            label = {"MAX": "maximum", "MIN": "minimum", "LATEST": "latest"}[m.meter.aggregation]
            out.append(f"{head}  period {label} {_figure(m.total.figure)} ({m.total.status})")
            rows = [("day", label, "status", "corrections")] + [
                (format_time(d.start_ns)[:10], _figure(d.figure), d.status, _correction_text(d))
                for d in m.days]
        else:
            out.append(f"{head}  distinct counts do not add up across windows: "
                       f"see tallyflow explain per window")
            rows = [("day", "status", "corrections")] + [
                (format_time(d.start_ns)[:10], d.status, _correction_text(d)) for d in m.days]
        out[-1] += f"  charge {_meter_money(s, m.meter.key)}"
        out += text_table(rows, "  ") + [""]
    if s.rating is None:
        out += ["Charges: not rated yet", ""]
    else:
        out.append(f"Charges (rating revision {s.rating.revision}, {s.rating.run_id})")
        out += text_table([("item", "amount")] + _charge_rows(s), "  ") + [""]
    out.append(f"Corrections {since}: {len(s.corrections)}")
    if s.corrections:
        out += text_table([("meter", "dimensions", "window", "was", "now", "change", "revision",
                            "reason")] + [
            (c.meter, c.dimensions, format_time(c.window_start_ns), _figure(c.before),
             _figure(c.now), _signed(c.delta), f"{c.revision} ({c.run_id})", c.reason)
            for c in s.corrections], "  ")
    return "\n".join(map(printable, out)) + "\n" + limits_text(s.subject, s.limits)


def _correction_text(bucket: Bucket) -> str:
    if not bucket.corrected_windows:
        return ""
    windows = f"{bucket.corrected_windows} window{'s' if bucket.corrected_windows > 1 else ''}"
    return f"{_signed(bucket.correction)} ({windows})"


# ---------------------------------------------------------------- HTML


CHART_WIDTH, CHART_HEIGHT, MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 760, 240, 90, 36, 24
COLORS = {"final": "#1f6feb", "provisional": "#9ecbff", "correction": "#d1242f"}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1f2328; max-width: 60rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.meta { color: #59636e; } table { border-collapse: collapse; margin: .6rem 0; }
th, td { padding: .2rem .7rem; border-bottom: 1px solid #d1d9e0; text-align: right; }
table { display: block; overflow-x: auto; max-width: 100%; }
th:first-child, td:first-child { text-align: left; }
td.total, .total-line .total { font-weight: 600; }
.legend span { display: inline-block; margin-right: 1.2rem; }
.swatch { display: inline-block; width: .8rem; height: .8rem; margin-right: .3rem; }
.corrected { color: #d1242f; }
h3 { font-size: 1rem; margin: 1.2rem 0 .3rem; } svg.gauge { display: block; }
"""


def render_html(s: Statement) -> str:
    esc = html.escape
    since = (f"since {format_time(s.since_ns)}" if s.since_ns is not None
             else "since the provisional figures")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Usage statement: {esc(s.subject)}</title>"
        f"<style>{_CSS}{LIMITS_CSS}</style></head><body>",
        f'<h1>Usage statement for <span id="subject">{esc(s.subject)}</span></h1>',
        f'<p class="meta">Period <time id="period-start">{format_time(s.start_ns)}</time> .. '
        f'<time id="period-end">{format_time(s.end_ns)}</time>, as of '
        f"{format_time(s.as_of_ns - s.as_of_ns % NS)}. <b>Final</b> figures are "
        "recomputed and change only with a new revision; <b>provisional</b> figures come from "
        "the stream and may still change.</p>",
        '<p class="legend">'
        + "".join(f'<span><i class="swatch" style="background:{COLORS[k]}"></i>{label}</span>'
                  for k, label in (("final", "final"), ("provisional", "provisional"),
                                   ("correction", "corrected")))
        + "</p>",
        "<h2>Summary</h2>",
        '<table id="summary"><tr><th>meter</th><th>aggregation</th><th>unit</th>'
        "<th>final</th><th>provisional</th><th>period figure</th><th>charge</th></tr>",
    ]
    for m in s.meters:
        key = esc(m.meter.key)
        final = _figure(m.total.final) if m.additive else m.total.status
        provisional = _figure(m.total.provisional) if m.additive else ""
        figure = _figure(m.total.figure) if m.combinable else "n/a"
        parts.append(f'<tr><td>{key}</td><td>{m.meter.aggregation}</td>'
                     f'<td>{esc(m.meter.unit)}</td><td class="final" data-meter="{key}">'
                     f'{final}</td><td class="provisional" data-meter="{key}">{provisional}</td>'
                     f'<td class="total" data-meter="{key}">{figure}</td>'
                     f'<td class="charge" data-meter="{key}">'
                     f'{esc(_meter_money(s, m.meter.key))}</td></tr>')
    parts.append("</table>")
    if s.rating is None:
        parts += ["<h2>Charges</h2>", '<p id="charges">Not rated yet.</p>']
    else:
        parts += [f"<h2>Charges <small>(rating revision {s.rating.revision}, "
                  f"{esc(s.rating.run_id)})</small></h2>",
                  '<table id="charges"><tr><th>item</th><th>amount</th></tr>']
        parts += [f'<tr data-item="{esc(item)}"><td>{esc(item)}</td>'
                  f'<td class="amount">{esc(amount)}</td></tr>'
                  for item, amount in _charge_rows(s)]
        parts.append("</table>")
    parts += limits_html(s.limits)
    for m in s.meters:
        parts += _meter_section(m)
    parts.append(f"<h2>Corrections {esc(since)}</h2>")
    if s.corrections:
        parts.append('<table id="corrections"><tr><th>meter</th><th>dimensions</th>'
                     "<th>window</th><th>was</th><th>now</th><th>change</th><th>revision</th>"
                     "<th>reason</th></tr>")
        for c in s.corrections:
            parts.append(
                f'<tr class="correction" data-meter="{esc(c.meter)}"><td>{esc(c.meter)}</td>'
                f"<td>{esc(c.dimensions)}</td><td>{format_time(c.window_start_ns)}</td>"
                f"<td>{_figure(c.before)}</td><td>{_figure(c.now)}</td>"
                f'<td class="corrected">{_signed(c.delta)}</td><td>{c.revision} '
                f"<small>{esc(c.run_id)}</small></td><td>{esc(c.reason)}</td></tr>")
        parts.append("</table>")
    else:
        parts.append('<p id="corrections">None.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _meter_section(m: MeterStatement) -> list[str]:
    esc = html.escape
    key = esc(m.meter.key)
    unit = f", {esc(m.meter.unit)}" if m.meter.unit else ""
    parts = [f'<section class="meter" data-meter="{key}">',
             f"<h2>{key} <small>({m.meter.aggregation}{unit})</small></h2>"]
    if m.combinable:
        parts.append(chart_svg(m))
    else:
        parts.append("<p>Distinct counts do not add up across windows: see "
                     "<code>tallyflow explain</code> per window.</p>")
    head = ("<tr><th>day</th><th>final</th><th>provisional</th><th>total</th>"
            "<th>corrections</th></tr>" if m.additive else
            "<tr><th>day</th><th>figure</th><th>status</th><th>corrections</th></tr>")
    parts.append(f'<table class="days" data-meter="{key}">{head}')
    for d in m.days:
        day = format_time(d.start_ns)[:10]
        cells = ([_figure(d.final or Decimal(0)), _figure(d.provisional or Decimal(0)),
                  _figure(d.figure)] if m.additive
                 else [_figure(d.figure) if m.combinable else "n/a", d.status])
        parts.append(f'<tr data-day="{day}"><td>{day}</td>'
                     + "".join(f"<td>{c}</td>" for c in cells)
                     + f'<td class="corrected">{_correction_text(d)}</td></tr>')
    parts += ["</table>", "</section>"]
    return parts


def chart_svg(m: MeterStatement) -> str:
    """Bars per chart bucket: final and provisional stacked (additive meters) or the bucket's
    figure coloured by status; a red marker above corrected buckets. Heights are floats for
    drawing only: the figures printed are exact."""
    buckets = m.chart
    plot_w = CHART_WIDTH - MARGIN_LEFT - 10
    plot_h = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    top = max((float(b.figure) for b in buckets if b.figure is not None), default=0.0)  # float-ok: pixels
    scale = plot_h / top if top > 0 else 0.0
    slot = plot_w / max(len(buckets), 1)
    bar_w = max(slot * 0.7, 1.0)
    base = MARGIN_TOP + plot_h
    key = html.escape(m.meter.key)
    out = [f'<svg class="chart" data-meter="{key}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
           f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
           f'aria-label="{key} over time">',
           f'<line x1="{MARGIN_LEFT}" y1="{base}" x2="{CHART_WIDTH - 10}" y2="{base}" '
           f'stroke="#59636e"/>',
           f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" y2="{base}" '
           f'stroke="#59636e"/>',
           f'<text x="{MARGIN_LEFT - 6}" y="{MARGIN_TOP + 4}" text-anchor="end" '
           f'font-size="11">{_short(top)}</text>',
           f'<text x="{MARGIN_LEFT - 6}" y="{base}" text-anchor="end" font-size="11">0</text>']
    label_every = max(1, len(buckets) // 8)
    for i, b in enumerate(buckets):
        x = MARGIN_LEFT + i * slot + (slot - bar_w) / 2
        when = format_time(b.start_ns)
        if m.additive:
            segments = [("final", b.final), ("provisional", b.provisional)]
        else:
            segments = [(b.status if b.status != "mixed" else "provisional", b.figure)]
        y = base
        for kind, value in segments:
            if value is None or value <= 0:
                continue
            height = float(value) * scale  # float-ok: pixels
            y -= height
            out.append(f'<rect class="bar {kind}" x="{x:.2f}" y="{y:.2f}" width="{bar_w:.2f}" '
                       f'height="{height:.2f}" fill="{COLORS[kind]}"><title>{when} {kind}: '
                       f"{format_decimal(value)}</title></rect>")
        if b.corrected_windows:
            cx = x + bar_w / 2
            out.append(f'<path class="correction-marker" d="M{cx - 5:.2f},{y - 12:.2f} '
                       f'L{cx + 5:.2f},{y - 12:.2f} L{cx:.2f},{y - 4:.2f} Z" '
                       f'fill="{COLORS["correction"]}"><title>{when} corrected '
                       f"{_signed(b.correction)} ({b.corrected_windows} windows)</title></path>")
        if i % label_every == 0:
            label = when[5:10] if m.chart_step_ns >= DAY_NS else when[5:13].replace("T", " ")
            out.append(f'<text x="{x + bar_w / 2:.2f}" y="{base + 14}" text-anchor="middle" '
                       f'font-size="10">{label}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _short(value: float) -> str:
    return f"{value:.4g}"


# ---------------------------------------------------------------- command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tallyflow statement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", required=True, help="The customer (CloudEvents subject).")
    add_period_arguments(parser)
    parser.add_argument("--since",
                        help="When the previous statement was produced (RFC 3339): corrections "
                             "are what recomputes committed after it changed. Default: "
                             "corrections relative to the provisional (streamed) figures.")
    parser.add_argument("--meter", action="append", dest="meters_shown",
                        help="Only this meter (repeatable). Default: every meter with usage.")
    parser.add_argument("--html", help="Also write the statement as a self-contained HTML page.")
    add_dataset_arguments(parser)
    add_limits_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command("tallyflow statement", lambda: _statement_and_report(args))


def _statement_and_report(args) -> int:
    start, end = parse_period(args.period_start, args.period_end)
    since = parse_rfc3339(args.since) if args.since else None
    catalog = load_meters(args.meters)
    for key in args.meters_shown or ():
        meter_of(catalog, key)
    data = Dataset.from_args(args)
    print("tallyflow statement: reading usage ...", file=sys.stderr)
    statement = build_statement(data, catalog, args.subject, start, end, since,
                                args.meters_shown)
    statement.limits = customer_limits(data, catalog, args, args.subject, start, end)
    print(render_text(statement), end="")
    if args.html:
        Path(args.html).write_text(render_html(statement), encoding="utf-8")
        print(f"tallyflow statement: wrote {args.html}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
