"""Stripe Billing Meters: one meter event per customer x meter x dimensions x window.

Quantities are whole numbers (`quantise`: the running total of a customer x
meter series rounded once, remainders carried in the ledger). The `identifier`
is derived from subject, meter, dimensions, window, revision, how many events
the window had before and the Stripe customer and meter it goes to, so a
resend is the same event. The event's
timestamp is its window start, so it lands in the right billing period.

Corrections, when a window's whole quantity changes (a restatement, or a
remainder moved by one):
- every event Stripe holds for the window is less than `CANCEL_SECONDS` old:
  a meter event adjustment cancels each, then one event carries the new
  quantity;
- otherwise, an increase is sent as one more event for the difference, and a
  decrease is recorded `failed` (a credit note is needed: Stripe cannot take
  usage back after 24 hours, and it is never dropped silently).
Windows older than 35 days are `failed` without a call (Stripe rejects them).
"""
from __future__ import annotations

from decimal import Decimal

from schemas.values import NS
from tallyflow.export.engine import (Context, SdkProvider, Sent, generations, holdings,
                                     request_entry)
from tallyflow.export.keys import export_key
from tallyflow.export.ledger import FAILED, PENDING, Entry
from tallyflow.export.quantise import quantise, round_once
from tallyflow.export.retry import Failure, retry_after_seconds
from tallyflow.export.usage import UsageRow

NAME = "stripe"
API_KEY_ENV = "STRIPE_API_KEY"
SDK = "stripe"  # the official SDK's module (the `export` extra)
DEFAULT_API_BASE = "https://api.stripe.com"
EVENT, CANCEL = "meter_event", "meter_event_adjustment"
# Stripe cancels meter events up to 24 hours after it received them; an hour is kept
# in hand for the requests between planning and sending.
CANCEL_SECONDS = 23 * 3600
MAX_AGE_SECONDS = 35 * 24 * 3600


def client(api_key: str, api_base: str | None):
    import stripe as sdk

    return sdk.StripeClient(api_key, base_addresses={"api": api_base or DEFAULT_API_BASE},
                            max_network_retries=0)


def classify(error: BaseException) -> Failure | None:
    import stripe as sdk

    if not isinstance(error, sdk.StripeError):
        return None
    status = getattr(error, "http_status", None)
    transient = status is None or status in (409, 429) or status >= 500
    return Failure(transient, status, error.user_message or str(error),
                   retry_after_seconds(error.headers))


class Stripe(SdkProvider):
    name = NAME
    classify = staticmethod(classify)

    def send(self, entry: Entry) -> Sent:
        body = entry.body()
        options = {"idempotency_key": entry.idempotency_key}
        if entry.object_type == EVENT:
            result = self._client.v1.billing.meter_events.create(params=body, options=options)
            return Sent(result.to_dict(), result.identifier)
        result = self._client.v1.billing.meter_event_adjustments.create(params=body,
                                                                        options=options)
        return Sent(result.to_dict(), body["cancel"]["identifier"])

    def plan(self, rows: list[UsageRow], state: dict[str, Entry], context: Context) -> list:
        held = holdings(state, EVENT, superseding=(CANCEL,))
        made = generations(state, EVENT)
        series: dict[tuple, dict[tuple, UsageRow | Entry]] = {}
        for window, entries in held.items():  # windows whose usage is gone go to zero
            series.setdefault(window[:2], {})[window] = entries[0]
        for row in rows:
            series.setdefault(row.window[:2], {})[row.window] = row
        planned = []
        for windows in series.values():
            ordered = sorted(windows.items(), key=lambda item: (item[0][3], item[0][2]))
            values = [about.value if isinstance(about, UsageRow) else Decimal(0)
                      for _, about in ordered]
            for (window, about), wanted in zip(ordered, quantise(values)):
                planned += self._correct(about, held.get(window, []), made.get(window, 0),
                                         wanted, context)
        return planned

    def _correct(self, about, live: list[Entry], made: int, wanted, context: Context) -> list:
        have = sum(int(e.quantity) for e in live)
        if have == wanted.quantity:
            return []
        exact = about.value if isinstance(about, UsageRow) else Decimal(0)

        def event(quantity: int, status: str = PENDING, reason: str | None = None) -> Entry:
            customer = context.mapping.customer(about.subject)
            event_name = context.mapping.meter(about.meter)
            key = export_key(NAME, "event", about.subject, about.meter, about.dimensions,
                             about.window_start, about.revision, made, customer, event_name)
            body = {"event_name": event_name, "identifier": key,
                    "timestamp": about.window_start // NS,
                    "payload": {"stripe_customer_id": customer, "value": str(quantity)}}
            return request_entry(NAME, EVENT, key, about, context, Decimal(quantity), body,
                                 status, reason, exact_value=exact,
                                 remainder=wanted.remainder)

        if about.window_start < context.now - MAX_AGE_SECONDS * NS:
            return [event(wanted.quantity - have, FAILED,
                          "the window is older than Stripe's 35 days: not sendable")]
        if all(e.requested_at > context.now - CANCEL_SECONDS * NS for e in live):
            cancels = [request_entry(
                NAME, CANCEL, export_key(NAME, "cancel", e.idempotency_key), e, context,
                -e.quantity, {"event_name": e.provider_meter, "type": "cancel",
                              "cancel": {"identifier": e.idempotency_key}},
                supersedes=e.idempotency_key) for e in live]
            return cancels + ([event(wanted.quantity)] if wanted.quantity else [])
        if wanted.quantity > have:
            return [event(wanted.quantity - have)]
        return [event(wanted.quantity - have, FAILED,
                      f"Stripe holds {have} and the window now needs {wanted.quantity}; its "
                      f"events are over 24 hours old and cannot be cancelled: issue a credit "
                      f"note for {have - wanted.quantity} units")]

    def expected_total(self, exact: Decimal) -> Decimal:
        return Decimal(round_once(exact))

    def ledger_totals(self, state: dict[str, Entry]) -> dict[tuple, Decimal]:
        """Per window, the whole units the ledger says Stripe holds."""
        return {window: sum((e.quantity for e in live), Decimal(0))
                for window, live in holdings(state, EVENT, superseding=(CANCEL,)).items()}

    def provider_totals(self, pairs: set[tuple], state: dict, context: Context,
                        call) -> dict[tuple, Decimal]:
        """(subject, meter) -> what Stripe's meter event summaries say for the period."""
        meters = call(lambda: {m.event_name: m.id for m in
                               self._client.v1.billing.meters.list().auto_paging_iter()})
        totals = {}
        for subject, meter in sorted(pairs):
            meter_id = meters.get(context.mapping.meter(meter))
            if meter_id is None:
                totals[(subject, meter)] = None
                continue
            summaries = call(lambda: self._client.v1.billing.meters.event_summaries.list(
                meter_id, {"customer": context.mapping.customer(subject),
                           "start_time": context.period_start // NS,
                           "end_time": context.period_end // NS}).auto_paging_iter())
            totals[(subject, meter)] = sum((Decimal(str(s.aggregated_value)) for s in summaries),
                                           Decimal(0))
        return totals


def build(api_key: str, api_base: str | None) -> Stripe:
    return Stripe(client(api_key, api_base))
