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
import sys
import time
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
def final_values(data: Dataset, alerts: list[dict], aggregations: dict) -> dict:
    """{(subject, meter, period_start): the period's value in the `usage` view}."""
    values: dict = {}
    for subject, meter, start, end in sorted({(a["subject"], a["meter"], a["period_start"],
                                                a["period_end"]) for a in alerts}):
        rows = data.query(
            sql.METER_PERIOD_VALUES, subject=subject, meter=meter, start=Instant(ns_of(start)), end=Instant(ns_of(end)))
        windows = [r["value"] if r["value"] is not None else r["value_bignumeric"] for r in rows]
        values[(subject, meter, start)] = period_value(aggregations[meter], windows)
    return values


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


def limits_section(data: Dataset, catalog, args, subject: str, start_ns: int,
                   end_ns: int) -> str:
    """The statement's "Limits" section: each threshold of the customer's periods within
    [start, end) and its crossing (when, at what usage, in which pane) or clearing."""
    from google.api_core.exceptions import NotFound

    try:
        alerts = data.query(sql.CUSTOMER_ALERTS, subject=subject, start=Instant(start_ns),
                            end=Instant(end_ns))
    except NotFound:  # a dataset from before limits existed: no alerts to show
        alerts = []
    limits = _thresholds(args, catalog, subject, start_ns, end_ns)
    if not alerts and not limits:
        return ""
    by_key = {(format_time(ns_of(a["period_start"])), a["meter"], a["threshold"], a["status"]): a
              for a in alerts}
    keys = sorted({key[:3] for key in by_key} | set(limits),
                  key=lambda k: (k[0], k[1], limits.get(k) or _quantity(by_key, k)))
    rows = [("period", "meter", "threshold", "quantity", "crossed at", "usage then", "pane",
             "final")]
    for period, meter, label in keys:
        crossed = by_key.get((period, meter, label, CROSSED))
        cleared = by_key.get((period, meter, label, CLEARED))
        quantity = limits.get((period, meter, label)) or _quantity(by_key, (period, meter, label))
        rows.append((period[:10], meter, label, format_decimal(quantity),
                     format_time(ns_of(crossed["crossed_at"])) if crossed else "not reached",
                     format_decimal(crossed["value"]) if crossed else "",
                     f"{crossed['pane_timing']} {crossed['pane_index']} of "
                     f"{format_time(ns_of(crossed['window_start']))}" if crossed else "",
                     f"cleared ({format_decimal(cleared['value'])})" if cleared else ""))
    return "\n".join(["", printable(f"Limits and alerts ({subject})")] + text_table(rows)) + "\n"


def _quantity(by_key: dict, key: tuple) -> Decimal:
    return next(a["threshold_quantity"] for k, a in by_key.items() if k[:3] == key)


def _thresholds(args, catalog, subject: str, start_ns: int, end_ns: int) -> dict:
    """{(period start, meter, label): quantity} of `--limits`, per period from `start_ns`."""
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
                found[(format_time(period_start), meter, level.label)] = level.quantity
        instant = period_end
    return found


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
