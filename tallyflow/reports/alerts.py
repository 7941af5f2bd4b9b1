"""Usage alerts after the fact: settling them against final usage, and the statement's
limits section (docs/limits.md).

`tallyflow settle-alerts --period-start T --period-end T` runs after a recompute
of the period: for every alert of a billing period inside [start, end) still
`crossed`, it takes the period's final usage from the `usage` view (the
recompute where one covers a window) and, where that ended below the
threshold, appends a `cleared` row with the same alert id (and publishes it
with `--alert_topic`). Rerunning it records nothing twice: an alert already
cleared is skipped, and the row's insert id is the alert id and status.

The stream raised the alert on provisional usage; `cleared` says the final
usage never reached it (a duplicate the recompute removed, a retracted
event). The stream never clears an alert, and never raises one again in the
same period.
"""
from __future__ import annotations

import argparse
import html
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal

from pipelines.options import (add_price_book, add_table_arguments, load_catalog_anywhere,
                               load_limits_anywhere, load_price_book_anywhere)
from pipelines.policy import run_command
from schemas import sql
from schemas.limits import period_value
from schemas.tables import USAGE_ALERTS
from schemas.values import format_decimal, format_time, parse_rfc3339, printable
from tallyflow.reports.data import Dataset, Instant, ns_of
from tallyflow.reports.explain import text_table
from tallyflow.reports.reconcile import uncovered
from transforms.bigquery_target import BigQueryTarget
from transforms.limits import CROSSED, alert_message
from transforms.rows import usage_alert_row

CLEARED = "cleared"
NOT_REACHED = "not reached"
# usage to date reaches the threshold, yet the stream never alerted: the final usage
# came out higher than the provisional (late events the stream could not count)
NO_ALERT = "reached without alert"


def period_usage(data: Dataset, aggregation: str, subject: str, meter: str, start_ns: int,
                 end_ns: int) -> Decimal:
    """A billing period's usage to date in the `usage` view (final where a recompute
    covers a window, else the latest pane): what its thresholds are measured against."""
    rows = data.query(sql.METER_PERIOD_VALUES, subject=subject, meter=meter,
                      start=Instant(start_ns), end=Instant(end_ns))
    return period_value(aggregation, [r["value"] if r["value"] is not None
                                      else r["value_bignumeric"] for r in rows])


def final_values(data: Dataset, alerts: list[dict], aggregations: dict) -> dict:
    """{(subject, meter, period_start): the period's value in the `usage` view}."""
    return {(subject, meter, start): period_usage(data, aggregations[meter], subject, meter,
                                                  ns_of(start), ns_of(end))
            for subject, meter, start, end in sorted({(a["subject"], a["meter"],
                                                       a["period_start"], a["period_end"])
                                                      for a in alerts})}


def cleared_alerts(alerts: list[dict], finals: dict, now_ns: int) -> list[dict]:
    """The `cleared` alerts: crossed ones whose period's final value is below the
    threshold. Each keeps the crossing's fields; value and time are the settlement's."""
    cleared = []
    for alert in alerts:
        final = finals[(alert["subject"], alert["meter"], alert["period_start"])]
        if final < alert["threshold_quantity"]:
            cleared.append({**_row_text(alert), "status": CLEARED,
                            "value": format_decimal(final),
                            "crossed_at": format_time(now_ns - now_ns % 1000)})
    return cleared


def _row_text(alert: dict) -> dict:
    """A queried alert row back in the shape the stream writes (RFC 3339, decimal text)."""
    out = {}
    for name, value in alert.items():
        if hasattr(value, "tzinfo"):
            value = format_time(ns_of(value))
        elif isinstance(value, Decimal):
            value = format_decimal(value)
        out[name] = value
    return out


def settle(data: Dataset, target: BigQueryTarget, aggregations: dict, start_ns: int,
           end_ns: int, job_id: str) -> tuple[int, list[dict]]:
    """Appends `cleared` rows; returns (alerts checked, the cleared alerts)."""
    gaps = uncovered(data.client, target, start_ns, end_ns)
    if gaps:
        spans = ", ".join(f"{format_time(s)}..{format_time(e)}" for s, e in gaps)
        raise ValueError(f"no recompute covers {spans}: final usage is the recompute's, run "
                         "tallyflow recompute first")
    alerts = [a for a in data.query(sql.OPEN_ALERTS, cleared=CLEARED, start=Instant(start_ns),
                                    end=Instant(end_ns)) if a["status"] == CROSSED]
    if not alerts:
        return 0, []
    cleared = cleared_alerts(alerts, final_values(data, alerts, aggregations), time.time_ns())
    rows = [usage_alert_row(alert, job_id) for alert in cleared]
    if rows:
        errors = data.client.insert_rows_json(target.table_id(USAGE_ALERTS),
                                              [row for _, row in rows],
                                              row_ids=[row_id for row_id, _ in rows])
        if errors:
            raise RuntimeError(f"usage_alerts refused cleared rows: {errors[:3]}")
    return len(alerts), cleared


def publish_cleared(topic: str, cleared: list[dict]) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    for alert in cleared:
        message = alert_message(alert)
        publisher.publish(topic, message.data, **message.attributes).result(timeout=60)


# ---------------------------------------------------------------- the statement


def add_limits_arguments(parser: argparse.ArgumentParser) -> None:
    """The statement's optional limits file, to show thresholds not crossed too."""
    parser.add_argument("--limits", help="Usage limits YAML file: show every threshold of "
                                         "the period, crossed or not (needs --prices).")
    add_price_book(parser, ": the plans and included quantities --limits refers to")


@dataclass
class Threshold:
    """One threshold of a billing period, and what the stream and the settlement said."""

    label: str
    quantity: Decimal
    crossed: dict | None = None  # its `crossed` row in usage_alerts
    cleared: dict | None = None  # its `cleared` row
    reached: bool = False        # by the usage to date

    @property
    def status(self) -> str:
        if self.cleared or self.crossed:
            return CLEARED if self.cleared else CROSSED
        return NO_ALERT if self.reached else NOT_REACHED


@dataclass
class MeterLimits:
    """A limited meter in one billing period: its usage to date against its thresholds."""

    meter: str
    start_ns: int
    end_ns: int
    thresholds: list[Threshold] = field(default_factory=list)
    usage: Decimal | None = None  # None: a meter the catalog no longer has


def customer_limits(data: Dataset, catalog, args, subject: str, start_ns: int,
                    end_ns: int) -> list[MeterLimits]:
    """The statement's limits: for each billing period of the customer overlapping
    [start, end) and each meter with a threshold in it (in `--limits`, or alerted), the
    period's usage to date, its thresholds and their crossings and clearings."""
    from google.api_core.exceptions import NotFound

    try:
        alerts = data.query(sql.CUSTOMER_ALERTS, subject=subject, start=Instant(start_ns),
                            end=Instant(end_ns))
    except NotFound:  # a dataset from before limits existed: no alerts to show
        alerts = []
    found: dict[tuple[int, str], MeterLimits] = {}

    def threshold(period_start, period_end, meter, label, quantity) -> Threshold:
        limits = found.setdefault((period_start, meter),
                                  MeterLimits(meter, period_start, period_end))
        for t in limits.thresholds:
            if t.label == label:
                return t
        limits.thresholds.append(Threshold(label, quantity))
        return limits.thresholds[-1]

    for (period_start, period_end, meter, label), quantity in _thresholds(
            args, catalog, subject, start_ns, end_ns).items():
        threshold(period_start, period_end, meter, label, quantity)
    for a in alerts:
        t = threshold(ns_of(a["period_start"]), ns_of(a["period_end"]), a["meter"],
                      a["threshold"], a["threshold_quantity"])
        status = CLEARED if a["status"] == CLEARED else CROSSED
        if getattr(t, status) is None:
            setattr(t, status, a)
    aggregations = {m.key: m.aggregation for m in catalog.meters}
    for limits in found.values():
        limits.thresholds.sort(key=lambda t: (t.quantity, t.label))
        if limits.meter in aggregations:
            limits.usage = period_usage(data, aggregations[limits.meter], subject,
                                        limits.meter, limits.start_ns, limits.end_ns)
            for t in limits.thresholds:
                t.reached = limits.usage >= t.quantity
    return [found[key] for key in sorted(found)]


def _thresholds(args, catalog, subject: str, start_ns: int, end_ns: int) -> dict:
    """{(period start, period end, meter, label): quantity} of `--limits`, for each
    billing period from `start_ns` to `end_ns`."""
    if not getattr(args, "limits", None):
        return {}
    if not args.prices:
        raise ValueError("--prices is required with --limits")
    prices = load_price_book_anywhere(args.prices)
    book = load_limits_anywhere(args.limits, catalog, prices)
    found, instant = {}, start_ns
    while instant < end_ns:
        period_start, period_end = book.period(prices, subject, instant)
        for meter in sorted(book.meters):
            for level in book.levels(prices, subject, meter, max(period_start, start_ns)):
                found[(period_start, period_end, meter, level.label)] = level.quantity
        instant = period_end
    return found


THRESHOLD_COLUMNS = ("threshold", "quantity", "status", "crossed at", "usage then", "pane",
                     "final usage", "cleared at")


def threshold_cells(t: Threshold) -> tuple[str, ...]:
    """A threshold's row (THRESHOLD_COLUMNS): the same in the text and the HTML section."""
    crossed, cleared = t.crossed, t.cleared
    return (t.label, format_decimal(t.quantity), t.status,
            format_time(ns_of(crossed["crossed_at"])) if crossed else "",
            format_decimal(crossed["value"]) if crossed else "",
            f"{crossed['pane_timing']} {crossed['pane_index']} of "
            f"{format_time(ns_of(crossed['window_start']))}" if crossed else "",
            format_decimal(cleared["value"]) if cleared else "",
            format_time(ns_of(cleared["crossed_at"])) if cleared else "")


def usage_text(limits: MeterLimits) -> str:
    return "-" if limits.usage is None else format_decimal(limits.usage)


def limits_text(subject: str, found: list[MeterLimits]) -> str:
    """The statement's "Limits and alerts" section for a terminal ("" without limits)."""
    if not found:
        return ""
    label, quantity, *rest = THRESHOLD_COLUMNS
    rows = [("period", "meter", label, quantity, "usage to date", *rest)]
    for limits in found:
        for t in limits.thresholds:
            label, quantity, *rest = threshold_cells(t)
            rows.append((format_time(limits.start_ns)[:10], limits.meter, label, quantity,
                         usage_text(limits), *rest))
    return "\n".join(["", printable(f"Limits and alerts ({subject})")] + text_table(rows)) + "\n"


GAUGE_WIDTH, GAUGE_HEIGHT, GAUGE_LEFT, GAUGE_BAR_Y, GAUGE_BAR_H = 760, 68, 10, 24, 16
STATUS_COLORS = {CROSSED: "#d1242f", CLEARED: "#9a6700", NO_ALERT: "#bc4c00",
                 NOT_REACHED: "#59636e"}
# the thresholds' table may be wider than the text: its cells are long and unbreakable
LIMITS_CSS = ("table.thresholds { font-size: .85rem; width: max-content; "
              "max-width: calc(100vw - 4rem); }\n"
              "table.thresholds td, table.thresholds th { white-space: nowrap; "
              "padding: .2rem .5rem; }\n") + "".join(
    f".status-{s.replace(' ', '-')} {{ color: {c}; font-weight: 600; }}\n"
    for s, c in STATUS_COLORS.items())


def limits_html(found: list[MeterLimits]) -> list[str]:
    """The statement's "Limits and alerts" section as HTML: per meter and billing period,
    the usage to date on a gauge marked at each threshold, and the thresholds' table."""
    if not found:
        return []
    esc = html.escape
    parts = ['<h2 id="limits">Limits and alerts</h2>',
             '<p class="meta">Usage to date is the billing period\'s usage: final where a '
             "recompute covers a window, else provisional. <b>crossed</b>: the stream's "
             "provisional usage reached the threshold and it alerted, once; <b>cleared</b>: "
             "the final usage did not reach it after all; <b>reached without alert</b>: the "
             "usage to date reaches it, but the stream's never did (events it could not "
             "count, such as late ones).</p>"]
    head = "".join(f"<th>{c}</th>" for c in THRESHOLD_COLUMNS)
    for limits in found:
        period = format_time(limits.start_ns)
        key = f'data-meter="{esc(limits.meter)}" data-period="{period}"'
        reached = [t for t in limits.thresholds if t.reached]
        parts += [f'<section class="limit" {key}>',
                  f"<h3>{esc(limits.meter)} <small>billing period {period[:10]} .. "
                  f"{format_time(limits.end_ns)[:10]}</small></h3>",
                  f'<p>Usage to date <b class="usage" {key}>{usage_text(limits)}</b>: '
                  f"{len(reached)} of {len(limits.thresholds)} thresholds reached now.</p>",
                  _gauge_svg(limits),
                  f'<table class="thresholds" {key}><tr>{head}</tr>']
        for t in limits.thresholds:
            cells = threshold_cells(t)
            status = t.status.replace(" ", "-")
            parts.append(f'<tr class="threshold-row" data-threshold="{esc(t.label)}" '
                         f'data-status="{t.status}">' + "".join(
                             f'<td class="{name.replace(" ", "-")}'
                             f'{" status-" + status if name == "status" else ""}">'
                             f'{esc(c).replace(" of ", " of <br>")}</td>'
                             for name, c in zip(THRESHOLD_COLUMNS, cells)) + "</tr>")
        parts += ["</table>", "</section>"]
    return parts


def _gauge_svg(limits: MeterLimits) -> str:
    """A bar of the usage to date with a marker per threshold, coloured by its status.
    Positions are floats for drawing only: the figures printed are exact."""
    usage = limits.usage or Decimal(0)
    top = max([t.quantity for t in limits.thresholds] + [usage]) * Decimal("1.05")
    width = GAUGE_WIDTH - 2 * GAUGE_LEFT

    def x_of(value: Decimal) -> float:
        return GAUGE_LEFT + (float(value / top) * width if top > 0 else 0.0)  # float-ok: pixels

    meter = html.escape(limits.meter)
    out = [f'<svg class="gauge" data-meter="{meter}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{GAUGE_WIDTH}" height="{GAUGE_HEIGHT}" '
           f'viewBox="0 0 {GAUGE_WIDTH} {GAUGE_HEIGHT}" role="img" '
           f'aria-label="{meter} usage to date against its thresholds">',
           f'<rect x="{GAUGE_LEFT}" y="{GAUGE_BAR_Y}" width="{width}" height="{GAUGE_BAR_H}" '
           f'fill="#eef1f4"/>',
           f'<rect class="usage-bar" x="{GAUGE_LEFT}" y="{GAUGE_BAR_Y}" '
           f'width="{x_of(usage) - GAUGE_LEFT:.2f}" height="{GAUGE_BAR_H}" fill="#1f6feb">'
           f"<title>usage to date {usage_text(limits)}</title></rect>"]
    for i, t in enumerate(limits.thresholds):
        x, color = x_of(t.quantity), STATUS_COLORS[t.status]
        quantity = format_decimal(t.quantity)
        label = html.escape(t.label if t.label == quantity else f"{t.label} ({quantity})")
        # labels alternate above and below the bar, so close thresholds stay legible
        y = GAUGE_BAR_Y - 10 if i % 2 == 0 else GAUGE_BAR_Y + GAUGE_BAR_H + 16
        out += [f'<line class="threshold-mark" x1="{x:.2f}" y1="{GAUGE_BAR_Y - 6}" '
                f'x2="{x:.2f}" y2="{GAUGE_BAR_Y + GAUGE_BAR_H + 4}" stroke="{color}" '
                f'stroke-width="2"><title>{label}: {t.status}</title></line>',
                f'<text x="{x:.2f}" y="{y}" text-anchor="middle" font-size="11" '
                f'fill="{color}">{label}</text>']
    out.append("</svg>")
    return "\n".join(out)


# ---------------------------------------------------------------- command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tallyflow settle-alerts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--period-start", "--period_start", dest="period_start", required=True,
                        help="Start of the recomputed span (RFC 3339, inclusive).")
    parser.add_argument("--period-end", "--period_end", dest="period_end", required=True,
                        help="End of the recomputed span (RFC 3339, exclusive); billing "
                             "periods wholly inside it are settled.")
    parser.add_argument("--meters", required=True, help="Meter catalog YAML file.")
    parser.add_argument("--alert_topic", "--alert-topic", dest="alert_topic",
                        help="Also publish each cleared alert to this Pub/Sub topic.")
    add_table_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command("tallyflow settle-alerts", lambda: _settle_and_report(args))


def _settle_and_report(args) -> int:
    start, end = parse_rfc3339(args.period_start), parse_rfc3339(args.period_end)
    if start >= end:
        raise ValueError("--period-start must be before --period-end")
    catalog = load_catalog_anywhere(args.meters)
    data = Dataset.from_args(args)
    target = BigQueryTarget(args.project, args.dataset, args.endpoint or None)
    job_id = f"settle-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    aggregations = {m.key: m.aggregation for m in catalog.meters}
    checked, cleared = settle(data, target, aggregations, start, end, job_id)
    if args.alert_topic and cleared:
        publish_cleared(args.alert_topic, cleared)
    print(f"settle-alerts {format_time(start)} .. {format_time(end)}: {checked} crossed "
          f"alerts checked, {len(cleared)} cleared")
    for alert in cleared:
        print(printable(f"  cleared {alert['alert_id']} {alert['subject']} {alert['meter']} "
                        f"{alert['threshold']} ({alert['threshold_quantity']}): final "
                        f"{alert['value']}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
