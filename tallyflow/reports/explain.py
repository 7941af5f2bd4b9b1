"""Explain a bill: how one usage number came to be, from the events behind it.

`tallyflow explain --subject C --meter M --window-start T` (or every window of
`--period-start`..`--period-end`) takes the customer's rows of the `usage`
view and, for each, shows:

  the number      value, event count, fingerprint; final (recompute revision)
                  or provisional (streaming pane)
  its events      identity, event time (full precision), value, ingest time and
                  the message it came in: the lineage query of docs/analysts.md
  dropped copies  later copies of the row's own identities (those whose kept
                  copy it counts) that deduplication dropped (first ingested
                  copy wins; `conflict` when a copy would have billed
                  differently, even another row), and the copies of them the
                  stream dropped (`duplicate_events`)
  late events     events that arrived after the window's allowed lateness
                  (`late_events`): only a recompute counts them
  history         the streaming panes and every committed recompute revision
                  covering the window (run, commit time, reason, value) and
                  whether it changed the number
  the check       the listed events, folded with tallyflow's own aggregation,
                  reproduce value, event count and fingerprint: MATCH or MISMATCH

Deduplication scope: a recompute deduplicates over the period it read, so for
a final row the lineage ranks the copies of an identity (earliest ingested
first) over that run's period; for a provisional row it ranks all copies (the
stream keeps the first copy it sees) and leaves out the late events (the
stream never counted them).

Every query filters by the customer (`subject`, a query parameter): nothing of
another customer is read into the output. Exit status (the one error
policy, pipelines/policy.py): 0 when every row matches, 1 on any MISMATCH, 2
on bad arguments or an unknown customer or meter, 3 when a BigQuery call fails
(naming the call) or on an unexpected error (its type and where it happened).
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from pipelines.options import parse_period
from pipelines.policy import run_command
from schemas import aggregation
from schemas.catalog import Meter, MeterCatalog
from schemas.events import Limits, UsageEvent, parse_payload, stored_ingest_ns
from schemas.metering import conflicts, metering_signature, value_text
from schemas.sql import CUSTOMER_METER_USAGE, EXPLAIN_SURROUNDING, LINEAGE
from schemas.values import format_decimal, format_time, parse_rfc3339, printable
from tallyflow.reports.data import (Dataset, Instant, ReportError, add_dataset_arguments,
                                    load_meters, meter_of, ns_of, row_value)
from transforms.bigquery_target import period_parameters

# ---------------------------------------------------------------- explaining


def explain(data: Dataset, catalog: MeterCatalog, subject: str, meter_key: str,
            start_ns: int, end_ns: int, dimensions: str | None = None, progress=None) -> list[dict]:
    """One explanation per usage row of the customer's meter with window_start in [start, end).

    The lineage query runs once per window (it is the documented one); what
    surrounds it (late and dropped copies, panes, revisions) is read once for
    the whole span, all concurrently.
    """
    meter = meter_of(catalog, meter_key)
    rows = data.query(CUSTOMER_METER_USAGE, period_parameters(start_ns, end_ns),
                      subject=subject, meter=meter.key)
    if dimensions is not None:
        rows = [r for r in rows if r["dimensions"] == dimensions]
    if not rows:
        data.require_subject(subject)
        raise ReportError(f"no {meter.key} usage for customer {subject!r} in "
                          f"{format_time(start_ns)} .. {format_time(end_ns)}"
                          + (f" with dimensions {dimensions}" if dimensions else ""))
    windows = sorted({(ns_of(r["window_start"]), ns_of(r["window_end"])) for r in rows})
    span = dict(subject=subject, event_type=meter.event_type, meter=meter.key,
                span_start=Instant(windows[0][0]), span_end=Instant(max(e for _, e in windows)))
    if progress:
        progress(f"{len(rows)} usage rows in {len(windows)} windows")
    with ThreadPoolExecutor(max_workers=8) as pool:
        lineage = {start: pool.submit(
            data.query, LINEAGE, subject=subject, event_type=meter.event_type,
            window_start=Instant(start), window_end=Instant(end)) for start, end in windows}
        surrounding = {name: pool.submit(data.query, sql, **{
            k: v for k, v in span.items() if "@" + k in sql})
            for name, sql in EXPLAIN_SURROUNDING.items()}
        found = {name: future.result() for name, future in surrounding.items()}
        copies = {start: [{**row, "event": _parse_stored(catalog, row)}
                          for row in future.result()] for start, future in lineage.items()}
    runs = [{**r, "start": ns_of(r["period_start"]), "end": ns_of(r["period_end"])}
            for r in found["runs"]]
    restated = {(r["run_id"], r["dimensions"], ns_of(r["window_start"])): r
                for r in found["restated"]}
    explanations = []
    for row in rows:
        window, dims = ns_of(row["window_start"]), row["dimensions"]
        end = ns_of(row["window_end"])
        evidence = {
            "copies": copies[window],
            "late": [r for r in found["late"] if window <= ns_of(r["time"]) < end],
            "stream_dropped": [r for r in found["stream_dropped"]
                               if window <= ns_of(r["kept_time"]) < end]}
        history = {
            "panes": [p for p in found["panes"]
                      if p["dimensions"] == dims and ns_of(p["window_start"]) == window],
            "runs": [{**r, **_figures(restated.get((r["run_id"], dims, window)))}
                     for r in runs if r["start"] <= window < r["end"]]}
        explanations.append(explain_row(catalog, meter, row, evidence, history))
    return explanations


def _figures(row: dict | None) -> dict:
    keys = ("value", "value_bignumeric", "event_count", "fingerprint")
    return {k: None for k in keys} if row is None else {k: row[k] for k in keys}


def _parse_stored(catalog: MeterCatalog, row: dict) -> UsageEvent | None:
    """An `events` row re-parsed with the catalog (None if the catalog now rejects it)."""
    parsed = parse_payload(row["raw"].encode("utf-8"), row["message_id"] or "", (),
                           catalog, Limits(now_ns=None),
                           ingest_ns=stored_ingest_ns(ns_of(row["ingest_time"]) // 1000))
    return parsed[0] if len(parsed) == 1 and isinstance(parsed[0], UsageEvent) else None


def _reading(event: UsageEvent | None, meter: Meter, dimensions: str):
    """(True, value) if `event` feeds `meter` under `dimensions`, else (False, None)."""
    for reading in (event.readings if event else ()):
        if reading.meter == meter.key and reading.dimensions == dimensions:
            return True, reading.value
    return False, None


def explain_row(catalog: MeterCatalog, meter: Meter, row: dict, evidence: dict,
                history: dict) -> dict:
    """The explanation of one usage row from its window's evidence (pure)."""
    dims = row["dimensions"]
    final = row["origin"] == "recompute"
    late_ids = {(r["source"], r["id"]) for r in evidence["late"]}
    counted, dropped = [], []
    kept = {(c["source"], c["id"]): c for c in evidence["copies"] if c["copy_rank"] == 1}
    owned = _owned_identities(evidence["copies"], kept, meter, dims)
    acc = aggregation.new_accumulator(meter.aggregation)
    for copy in evidence["copies"]:
        identity = (copy["source"], copy["id"])
        feeds, value = _reading(copy["event"], meter, dims)
        first = kept.get(identity)
        if copy["copy_rank"] > 1:
            if identity in owned:
                dropped.append(_dropped(copy, first))
            continue
        if not (copy["counted"] and feeds) or (not final and identity in late_ids):
            continue
        event = copy["event"]
        aggregation.add_reading(acc, value, event.time_ns, event.id,
                                aggregation.identity_hash(*identity))
        counted.append({"source": event.source, "id": event.id,
                        "time": format_time(event.time_ns),
                        "value": value_text(value),
                        "ingest_time": format_time(ns_of(copy["ingest_time"])),
                        "message_id": copy["message_id"],
                        "late": identity in late_ids})
    value, count, fingerprint = aggregation.extract(acc) if counted else (None, 0, None)
    expected = row_value(row)
    return {
        "subject": row["subject"], "meter": meter.key, "unit": meter.unit,
        "aggregation": meter.aggregation, "dimensions": dims,
        "window_start": format_time(ns_of(row["window_start"])),
        "window_end": format_time(ns_of(row["window_end"])),
        "origin": row["origin"], "revision": row["revision"],
        "value": format_decimal(expected), "event_count": row["event_count"],
        "fingerprint": row["fingerprint"],
        "events": counted,
        "dropped_duplicates": dropped,
        "stream_dropped_duplicates": [
            {"source": d["source"], "id": d["id"], "message_id": d["message_id"],
             "kept_message_id": d["kept_message_id"], "conflict": d["conflict"],
             "seen_at": format_time(ns_of(d["seen_at"]))} for d in evidence["stream_dropped"]
            if (d["source"], d["id"]) in owned],
        "late_events": [
            {"source": r["source"], "id": r["id"], "time": format_time(ns_of(r["time"])),
             "ingest_time": format_time(ns_of(r["ingest_time"])),
             "lateness_seconds": format_decimal(Decimal(r["lateness_seconds"])),
             "counted": final} for r in evidence["late"]],
        "history": _history_entries(history),
        "check": {
            "value": None if value is None else format_decimal(value),
            "event_count": count, "fingerprint": fingerprint,
            "match": (value is not None and value == expected and count == row["event_count"]
                      and fingerprint == row["fingerprint"]),
        },
    }


def _owned_identities(copies: list[dict], kept: dict, meter: Meter, dims: str) -> set:
    """The identities whose copies belong under this row: those whose kept copy feeds it
    (a dropped copy that would have billed another row still belongs to its kept copy's
    row), or, when the kept copy is another customer's, those a copy of ours would feed."""
    owned = set()
    for copy in copies:
        identity = (copy["source"], copy["id"])
        first = kept.get(identity)
        if first is None:
            if _reading(copy["event"], meter, dims)[0]:
                owned.add(identity)
        elif first["counted"] and _reading(first["event"], meter, dims)[0]:
            owned.add(identity)
    return owned


def _dropped(copy: dict, first: dict | None) -> dict:
    event, kept = copy["event"], first and first["event"]
    if kept is None:
        why = "its first copy belongs to another customer (not shown)"
    else:
        why = "same as the kept copy" if event and not conflicts(
            metering_signature(event), metering_signature(kept)) \
            else "CONFLICT: differs from the kept copy"
    return {"source": copy["source"], "id": copy["id"], "copy": copy["copy_rank"],
            "time": format_time(event.time_ns) if event else None,
            "ingest_time": format_time(ns_of(copy["ingest_time"])),
            "message_id": copy["message_id"],
            "kept_message_id": first["message_id"] if first else None,
            "conflict": why.startswith("CONFLICT") or kept is None, "why": why}


def _history_entries(history: dict) -> list[dict]:
    """Panes, then revisions, each with what it changed relative to the figure before it."""
    entries, shown = [], None
    for pane in history["panes"]:
        value = row_value(pane)
        entries.append({"kind": "pane", "pane_index": pane["pane_index"],
                        "pane_timing": pane["pane_timing"], "is_final": pane["is_final"],
                        "at": format_time(ns_of(pane["emitted_at"])), "job_id": pane["job_id"],
                        "value": format_decimal(value), "event_count": pane["event_count"],
                        "change": _change(shown, value)})
        shown = value
    for run in history["runs"]:
        has_row = run["event_count"] is not None
        value = row_value(run) if has_row else Decimal(0)
        entries.append({"kind": "revision", "run_id": run["run_id"],
                        "revision": run["revision"],
                        "at": format_time(ns_of(run["committed_at"])), "reason": run["reason"],
                        "period": f"{format_time(ns_of(run['period_start']))} .. "
                                  f"{format_time(ns_of(run['period_end']))}",
                        "value": format_decimal(value) if has_row else None,
                        "event_count": run["event_count"] if has_row else 0,
                        "change": _change(shown, value)})
        shown = value
    return entries


def _change(before: Decimal | None, after: Decimal) -> str | None:
    if before is None:
        return None
    return None if before == after else format_decimal(after - before)


# ---------------------------------------------------------------- output


def render(explanations: list[dict], max_events: int) -> str:
    out = []
    for e in explanations:
        unit = f" {e['unit']}" if e["unit"] else ""
        status = (f"final: recompute revision {e['revision']}" if e["origin"] == "recompute"
                  else "provisional: latest streaming pane")
        out += [f"{e['subject']}  {e['meter']} ({e['aggregation']}) {e['dimensions']}  "
                f"{e['window_start']} .. {e['window_end']}",
                f"  value {e['value']}{unit}, {e['event_count']} events, fingerprint "
                f"{e['fingerprint']} ({status})", ""]
        out.append(f"  events behind it ({len(e['events'])})")
        out += text_table([("source", "id", "time", "value", "ingested", "message")] + [
            (v["source"], v["id"], v["time"], v["value"] if v["value"] is not None else "1",
             v["ingest_time"], (v["message_id"] or "") + ("  (late)" if v["late"] else ""))
            for v in e["events"][:max_events]])
        if len(e["events"]) > max_events:
            out.append(f"    ... {len(e['events']) - max_events} more (--max-events)")
        if e["dropped_duplicates"]:
            out.append(f"  dropped duplicates ({len(e['dropped_duplicates'])}): first ingested "
                       "copy wins")
            out += text_table([("source", "id", "copy", "ingested", "message", "kept", "")] + [
                (d["source"], d["id"], str(d["copy"]), d["ingest_time"], d["message_id"] or "",
                 d["kept_message_id"] or "-", d["why"]) for d in e["dropped_duplicates"]])
        if e["stream_dropped_duplicates"]:
            out.append(f"  copies the stream dropped ({len(e['stream_dropped_duplicates'])})")
            out += text_table([("source", "id", "seen", "message", "kept", "")] + [
                (d["source"], d["id"], d["seen_at"], d["message_id"] or "",
                 d["kept_message_id"] or "", "CONFLICT" if d["conflict"] else "same")
                for d in e["stream_dropped_duplicates"]])
        if e["late_events"]:
            out.append(f"  late events ({len(e['late_events'])}): past allowed lateness, "
                       + ("counted by the recompute" if e["origin"] == "recompute"
                          else "not in the stream's figure until a recompute"))
            out += text_table([("source", "id", "time", "ingested", "late by")] + [
                (v["source"], v["id"], v["time"], v["ingest_time"], f"{v['lateness_seconds']} s")
                for v in e["late_events"]])
        out.append("  history")
        for h in _summarized(e["history"]):
            out.append("    " + h)
        check = e["check"]
        verdict = "MATCH" if check["match"] else "MISMATCH"
        out += [f"  check: the {check['event_count']} listed events give value {check['value']}, "
                f"{check['event_count']} events, fingerprint {check['fingerprint']}: {verdict}",
                ""]
    return "\n".join(map(printable, out))  # per line: an event's newline is escaped too


def _summarized(history: list[dict], panes_shown: int = 3) -> list[str]:
    lines = []
    panes = [h for h in history if h["kind"] == "pane"]
    if len(panes) > panes_shown:
        lines.append(f"({len(panes) - panes_shown} earlier panes)")
    for h in panes[-panes_shown:] + [h for h in history if h["kind"] == "revision"]:
        change = f"  changed {_signed(h['change'])}" if h["change"] else ""
        if h["kind"] == "pane":
            lines.append(f"stream pane {h['pane_index']} {h['pane_timing']}"
                         f"{' final' if h['is_final'] else ''} at {h['at']} by {h['job_id']}: "
                         f"{h['value']} ({h['event_count']} events){change}")
        else:
            figure = (f"{h['value']} ({h['event_count']} events)" if h["value"] is not None
                      else "no row (no events)")
            lines.append(f"revision {h['revision']} by run {h['run_id']} at {h['at']} "
                         f"(period {h['period']}) because {h['reason']!r}: {figure}{change}")
    return lines or ["(no streaming pane, no recompute)"]


def _signed(text: str) -> str:
    return text if text.startswith("-") else "+" + text


def text_table(rows: list[tuple], indent: str = "    ") -> list[str]:
    """Rows as left-aligned columns (the first row is the header), cells escaped for a
    terminal (they hold what events said)."""
    rows = [[printable(str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


# ---------------------------------------------------------------- command


def window_bounds(args) -> tuple[int, int]:
    """[start, end) of the windows to explain: one window start, or a period."""
    if args.window_start and (args.period_start or args.period_end):
        raise ReportError("give --window-start or --period-start/--period-end, not both")
    if args.window_start:
        start = parse_rfc3339(args.window_start)
        return start, start + 1000  # the window starting exactly there
    if not (args.period_start and args.period_end):
        raise ReportError("give --window-start, or --period-start and --period-end")
    return parse_period(args.period_start, args.period_end)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tallyflow explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", required=True, help="The customer (CloudEvents subject).")
    parser.add_argument("--meter", required=True, help="Meter key from the catalog.")
    parser.add_argument("--window-start", "--window_start", dest="window_start",
                        help="Start of the window to explain (RFC 3339).")
    parser.add_argument("--period-start", "--period_start", dest="period_start",
                        help="Explain every window starting in [period start, period end).")
    parser.add_argument("--period-end", "--period_end", dest="period_end",
                        help="End of the period (exclusive).")
    parser.add_argument("--dimensions",
                        help='Only the row with these dimensions (JSON, sorted keys, as in the '
                             'usage view: {"model":"large-2"}).')
    parser.add_argument("--max-events", "--max_events", dest="max_events", type=int, default=50,
                        help="Events listed per row in the text output (the check always uses "
                             "all of them).")
    parser.add_argument("--json", action="store_true",
                        help="Print the explanations as JSON (every event, no limit).")
    add_dataset_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command("tallyflow explain", lambda: _explain_and_report(args))


def _explain_and_report(args) -> int:
    start, end = window_bounds(args)
    catalog = load_meters(args.meters)
    meter_of(catalog, args.meter)
    data = Dataset.from_args(args)
    explanations = explain(data, catalog, args.subject, args.meter, start, end,
                           args.dimensions,
                           progress=lambda m: print(f"tallyflow explain: {m}", file=sys.stderr))
    if args.json:
        print(json.dumps(explanations, indent=2))
    else:
        print(render(explanations, args.max_events))
    return 0 if all(e["check"]["match"] for e in explanations) else 1


if __name__ == "__main__":
    sys.exit(main())
