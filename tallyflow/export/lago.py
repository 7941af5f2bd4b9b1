"""Lago: one event per customer x meter x dimensions x window, with a deterministic
`transaction_id`, carrying the window's exact value (a decimal string) in
`properties.value` and the dimensions as further properties.

Events, not aggregated usage: Lago's billable metrics aggregate events
themselves (a `sum_agg` on `value`, filters on the dimensions), and an event
with a transaction id is the one write Lago deduplicates. Lago has no API to
delete or amend an event, so a restated window is corrected by one more event
carrying the exact *difference* (negative for a decrease), under a new
transaction id; the sum over a window's events is always its current exact
value. Lago subscriptions are the customers: map each subject to its
`external_subscription_id`.

Lago's SDK retries a 429 on events itself (up to 3 times, waiting for Lago's
`x-ratelimit-reset`; its client settings do not reach the events call); the
one retry policy takes over when it gives up, with the same header.
"""
from __future__ import annotations

import json
from decimal import Decimal

from schemas.values import NS
from tallyflow.export.engine import (Context, SdkProvider, Sent, generations, holdings,
                                     request_entry)
from tallyflow.export.keys import export_key
from tallyflow.export.ledger import FAILED, SENT, Entry
from tallyflow.export.retry import Failure, retry_after_seconds
from tallyflow.export.usage import UsageRow

NAME = "lago"
API_KEY_ENV = "LAGO_API_KEY"
SDK = "lago_python_client"  # the official SDK's module (the `export` extra)
DEFAULT_API_BASE = "https://api.getlago.com/"
EVENT = "event"


def classify(error: BaseException) -> Failure | None:
    import httpx
    from lago_python_client.exceptions import LagoApiError, LagoRateLimitError

    if isinstance(error, LagoApiError):
        status = error.status_code
        wait = (float(error.reset)  # float-ok: seconds to wait, not a usage value
                if isinstance(error, LagoRateLimitError) and error.reset is not None
                else retry_after_seconds(error.headers))
        return Failure(status == 429 or status >= 500, status,
                       json.dumps(error.response, default=str) if error.response else
                       str(error.detail), wait)
    if isinstance(error, httpx.TransportError):
        return Failure(True, None, f"{type(error).__name__}: {error}")
    return None


def window_totals(state: dict[str, Entry]) -> dict[tuple, Decimal]:
    """Per window, the exact value Lago holds: the sum of the sent changes."""
    return {window: sum((e.quantity for e in sent), Decimal(0))
            for window, sent in holdings(state, EVENT).items()}


class Lago(SdkProvider):
    name = NAME
    classify = staticmethod(classify)

    def send(self, entry: Entry) -> Sent:
        from lago_python_client.models import Event

        result = self._client.events.create(Event(**entry.body()))
        return Sent(result.dict(), result.lago_id)

    def plan(self, rows: list[UsageRow], state: dict[str, Entry], context: Context) -> list:
        held = window_totals(state)
        made = generations(state, EVENT)
        current = {row.window: row for row in rows}
        latest = {e.window: e for e in state.values() if e.status == SENT}
        planned = []
        for window in sorted(set(current) | set(held), key=lambda w: (w[0], w[1], w[3], w[2])):
            about = current.get(window) or latest[window]
            value = current[window].value if window in current else Decimal(0)
            change = value - held.get(window, Decimal(0))
            if change:
                planned.append(self._event(about, value, change, made.get(window, 0), context))
        return planned

    def _event(self, about, value: Decimal, change: Decimal, made: int,
               context: Context) -> Entry:
        subscription = context.mapping.customer(about.subject)
        code = context.mapping.meter(about.meter)
        key = export_key(NAME, "event", about.subject, about.meter, about.dimensions,
                         about.window_start, about.revision, made, subscription, code)
        dimensions = json.loads(about.dimensions)
        body = {"transaction_id": key, "external_subscription_id": subscription, "code": code,
                "timestamp": about.window_start // NS,
                "properties": {**dimensions, "value": str(change)}}
        if "value" in dimensions:
            return request_entry(NAME, EVENT, key, about, context, change, body, FAILED,
                                 "a dimension named `value` would overwrite the value "
                                 "property", exact_value=value)
        return request_entry(NAME, EVENT, key, about, context, change, body, exact_value=value)

    def expected_total(self, exact: Decimal) -> Decimal:
        return exact

    def ledger_totals(self, state: dict[str, Entry]) -> dict[tuple, Decimal]:
        return window_totals(state)

    def provider_totals(self, pairs: set[tuple], state: dict, context: Context,
                        call) -> dict[tuple, Decimal]:
        """(subject, meter) -> the sum of the events Lago returns for the ledger's
        transaction ids (an id Lago does not know counts nothing)."""
        from lago_python_client.exceptions import LagoApiError

        def find(key):
            try:
                return self._client.events.find(key)
            except LagoApiError as error:
                if error.status_code == 404:
                    return None
                raise

        totals = {pair: Decimal(0) for pair in pairs}
        for entry in state.values():
            if entry.object_type != EVENT or entry.status != SENT or not (
                    context.period_start <= entry.window_start < context.period_end):
                continue
            event = call(lambda key=entry.idempotency_key: find(key))
            if event is not None:
                pair = (entry.subject, entry.meter)
                totals[pair] = totals.get(pair, Decimal(0)) + Decimal(
                    str(event.properties["value"]))
        return totals


def build(api_key: str, api_base: str | None) -> Lago:
    from lago_python_client.client import Client

    return Lago(Client(api_key=api_key, api_url=api_base or DEFAULT_API_BASE,
                       retry_on_rate_limit=False))
