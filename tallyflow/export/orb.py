"""Orb: one event per customer x meter x dimensions x window on `/ingest`, with a
deterministic `idempotency_key`, carrying the window's exact value (a decimal
string, for a metric like `SUM(CAST(value AS DECIMAL))`) in `properties.value`
and the dimensions as further properties.

Orb takes events only within its grace period (`GRACE_SECONDS` after their
timestamp, 12 hours by default). A window first sent later, or any window
restated after it was sent, goes through a backfill: tallyflow creates one
with `replace_existing_events` for the customer and the window's timeframe,
ingests every current event of that customer and window into it, and closes
it, so Orb swaps the old events for the new ones at once. The backfill is
created under an idempotency key: after a crash the rerun finds the same
backfill and finishes it. If Orb rejects part of it, the backfill is reverted
and the row fails in the ledger; the old events stay as they were.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from decimal import Decimal

from schemas.values import NS, format_time
from tallyflow.export.engine import Context, SdkProvider, Sent, generations, request_entry
from tallyflow.export.keys import export_key
from tallyflow.export.ledger import SENT, Entry
from tallyflow.export.retry import Failure, retry_after_seconds
from tallyflow.export.usage import UsageRow

NAME = "orb"
API_KEY_ENV = "ORB_API_KEY"
SDK = "orb"  # the official SDK's module (the `export` extra)
DEFAULT_API_BASE = "https://api.withorb.com/v1"
EVENT, BACKFILL = "event", "backfill"
GRACE_SECONDS = 12 * 3600
ALL = "*"  # a backfill is about every meter of its customer and window
INGEST_BATCH = 500  # events per /ingest request (Orb's limit)


class Rejected(Exception):
    """Orb answered 200 but listed events in `validation_failed`."""


def classify(error: BaseException) -> Failure | None:
    import orb as sdk

    if isinstance(error, Rejected):
        return Failure(False, 400, str(error))
    if isinstance(error, sdk.APIStatusError):
        status = error.status_code
        return Failure(status == 429 or status >= 500, status, str(error.message),
                       retry_after_seconds(error.response.headers))
    if isinstance(error, sdk.APIConnectionError):
        return Failure(True, None, str(error))
    return None


def window_values(state: dict[str, Entry]) -> dict[tuple, Entry]:
    """Per window, the event Orb counts: the latest sent one (a backfill's replacement
    rows included; a window a backfill emptied has a row of quantity 0)."""
    live: dict[tuple, Entry] = {}
    for entry in sorted(state.values(), key=lambda e: e.recorded_at):
        if entry.object_type == EVENT and entry.status == SENT:
            live[entry.window] = entry
    return live


class Orb(SdkProvider):
    name = NAME
    classify = staticmethod(classify)

    # ---------------------------------------------------------------- planning
    def plan(self, rows: list[UsageRow], state: dict[str, Entry], context: Context) -> list:
        live = window_values(state)
        made = generations(state, EVENT)
        current = {row.window: row for row in rows}
        groups: dict[tuple, list] = {}  # (subject, window start) -> windows to correct
        planned = []
        for window in sorted(set(current) | set(live), key=lambda w: (w[0], w[3], w[1], w[2])):
            row, sent = current.get(window), live.get(window)
            value = row.value if row else Decimal(0)
            if sent is not None and sent.quantity == value:
                continue
            late = (row or sent).window_end <= context.now - GRACE_SECONDS * NS
            if sent is None and not late:
                planned.append(self._event_entry(row, made.get(window, 0), context))
            else:
                groups.setdefault((window[0], window[3]), []).append(window)
        for (subject, start), _ in sorted(groups.items()):
            everything = [r for w, r in current.items() if w[0] == subject and w[3] == start]
            emptied = [e for w, e in live.items() if w[0] == subject and w[3] == start
                       and w not in current and e.quantity]
            planned.append(self._backfill_entry(subject, start, everything, emptied, made,
                                                state, context))
        return planned

    def _event(self, row: UsageRow, made: int, context: Context) -> dict:
        customer, name = context.mapping.customer(row.subject), context.mapping.meter(row.meter)
        key = export_key(NAME, "event", row.subject, row.meter, row.dimensions,
                         row.window_start, row.revision, made, customer, name)
        return {"event_name": name, "external_customer_id": customer, "idempotency_key": key,
                "timestamp": format_time(row.window_start),
                "properties": {**json.loads(row.dimensions), "value": str(row.value)}}

    def _event_entry(self, row: UsageRow, made: int, context: Context) -> Entry:
        body = self._event(row, made, context)
        return request_entry(NAME, EVENT, body["idempotency_key"], row, context, row.value,
                             body, exact_value=row.value)

    def _backfill_entry(self, subject: str, start: int, rows: list[UsageRow],
                        emptied: list[Entry], made: dict, state: dict,
                        context: Context) -> Entry:
        window_end = (rows[0] if rows else emptied[0]).window_end
        customer = context.mapping.customer(subject)
        tries = generations(state, BACKFILL).get((subject, ALL, "{}", start), 0)
        key = export_key(NAME, "backfill", subject, start, tries, customer)
        body = {"timeframe_start": format_time(start), "timeframe_end": format_time(window_end),
                "external_customer_id": customer, "replace_existing_events": True,
                "events": [{"meter": r.meter, "dimensions": r.dimensions,
                            "revision": r.revision,
                            "event": self._event(r, made.get(r.window, 0), context)}
                           for r in rows],
                "emptied": [{"meter": e.meter, "provider_meter": e.provider_meter,
                             "dimensions": e.dimensions,
                             "revision": e.revision,
                             "key": export_key(NAME, "emptied", e.idempotency_key, key)}
                            for e in emptied]}
        about = UsageRow(subject, ALL, "{}", start, window_end, Decimal(0), None)
        return replace(request_entry(NAME, BACKFILL, key, about, context, Decimal(0), body),
                       provider_meter=ALL)

    # ---------------------------------------------------------------- sending
    def send(self, entry: Entry) -> Sent:
        body = entry.body()
        if entry.object_type == EVENT:
            self._ingest([body])
            return Sent({"ingested": body["idempotency_key"]}, body["idempotency_key"])
        return self._backfill(entry, body)

    def _ingest(self, events: list[dict], backfill_id: str | None = None) -> None:
        for start in range(0, len(events), INGEST_BATCH):
            extra = {"backfill_id": backfill_id} if backfill_id else {}
            result = self._client.events.ingest(events=events[start:start + INGEST_BATCH],
                                                **extra)
            if result.validation_failed:
                raise Rejected("; ".join(f"{f.idempotency_key}: {', '.join(f.validation_errors)}"
                                         for f in result.validation_failed))

    def _backfill(self, entry: Entry, body: dict) -> Sent:
        backfill = self._client.events.backfills.create(
            timeframe_start=body["timeframe_start"], timeframe_end=body["timeframe_end"],
            external_customer_id=body["external_customer_id"], replace_existing_events=True,
            idempotency_key=entry.idempotency_key)
        if backfill.status == "pending":
            try:
                self._ingest([e["event"] for e in body["events"]], backfill.id)
            except Exception as error:  # noqa: BLE001 - a transient failure resumes it
                failure = classify(error)
                if failure is not None and not failure.transient:
                    self._client.events.backfills.revert(backfill.id)
                raise
            backfill = self._client.events.backfills.close(backfill.id)
        if backfill.status != "reflected":
            raise Rejected(f"backfill {backfill.id} is {backfill.status}, not reflected")
        return Sent(backfill.to_dict(mode="json"), backfill.id, self._replacements(entry, body))

    def _replacements(self, entry: Entry, body: dict) -> tuple:
        """The ledger rows of what the closed backfill left in Orb for its window: its
        events, and a row of quantity 0 for each window it emptied."""
        now = time.time_ns()
        common = {"object_type": EVENT, "status": SENT, "supersedes": None,
                  "provider_object": entry.idempotency_key, "recorded_at": now}
        rows = []
        for item in body["events"]:
            event = item["event"]
            value = Decimal(event["properties"]["value"])
            rows.append(replace(entry, **common, idempotency_key=event["idempotency_key"],
                                meter=item["meter"], provider_meter=event["event_name"],
                                dimensions=item["dimensions"], revision=item["revision"],
                                quantity=value, exact_value=value,
                                request=json.dumps(event, sort_keys=True)))
        for item in body["emptied"]:
            rows.append(replace(entry, **common, idempotency_key=item["key"],
                                meter=item["meter"], provider_meter=item["provider_meter"],
                                dimensions=item["dimensions"],
                                revision=item["revision"], quantity=Decimal(0),
                                exact_value=Decimal(0), request="{}"))
        return tuple(rows)

    # ---------------------------------------------------------------- reconciling
    def expected_total(self, exact: Decimal) -> Decimal:
        return exact

    def ledger_totals(self, state: dict[str, Entry]) -> dict[tuple, Decimal]:
        return {window: e.quantity for window, e in window_values(state).items()}

    def provider_totals(self, pairs: set[tuple], state: dict, context: Context,
                        call) -> dict[tuple, Decimal]:
        """(subject, meter) -> the sum of the live events Orb finds for every event key the
        ledger ever sent in the period (a replaced event must be gone)."""
        sent = {e.idempotency_key: e for e in state.values()
                if e.object_type == EVENT and e.status == SENT
                and context.period_start <= e.window_start < context.period_end}
        totals = {pair: Decimal(0) for pair in pairs}
        keys = sorted(sent)
        for start in range(0, len(keys), INGEST_BATCH):
            found = call(lambda part=keys[start:start + INGEST_BATCH]:
                         self._client.events.search(event_ids=part).data)
            for event in found:
                entry = sent.get(event.id)
                if entry is not None and not event.deprecated:
                    pair = (entry.subject, entry.meter)
                    totals[pair] = totals.get(pair, Decimal(0)) + Decimal(
                        str(event.properties["value"]))
        return totals


def build(api_key: str, api_base: str | None) -> Orb:
    import orb as sdk

    return Orb(sdk.Orb(api_key=api_key, base_url=api_base or DEFAULT_API_BASE, max_retries=0))
