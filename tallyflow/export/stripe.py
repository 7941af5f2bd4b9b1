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

Two APIs carry the events (`--stripe-api`, default `auto`):
- v1 `POST /v1/billing/meter_events`: one call per event, validated at once;
- v2 meter event streams: a short-lived session (`POST /v2/billing/meter_event_session`,
  its token valid 15 minutes) and `POST /v2/billing/meter_event_stream` on
  meter-events.stripe.com with up to 100 events a call, authenticated with the token.
  The token is renewed before it expires, and when Stripe says it has
  (`billing_meter_event_session_expired`) the batch is retried with a new one.
`auto` streams when a run has `STREAM_FROM` events or more to send: the stream
makes 100 times fewer calls, but validates events asynchronously, so before
streaming the exporter checks each event's meter (active) and customer (exists)
itself, once per run, and fails those rows in the ledger as v1 would.
The identifier, the quantity and the ledger rows are the same on both APIs
(object type `meter_event` or `meter_event_stream`); a resend goes by the API its
first attempt took, and Stripe deduplicates identifiers across both.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from decimal import Decimal

from schemas.values import NS, format_time, parse_rfc3339
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
STREAM = "meter_event_stream"  # an event sent on the v2 meter event stream
EVENTS = (EVENT, STREAM)
APIS = ("v1", "v2", "auto")
STREAM_FROM = 1000  # events in a run from which `auto` streams (10 calls instead of 1,000)
STREAM_BATCH = 100  # events per meter_event_stream call (Stripe's limit)
SESSION_MARGIN_SECONDS = 60  # a session token this close to expiry is renewed first
# Stripe cancels meter events up to 24 hours after it received them; an hour is kept
# in hand for the requests between planning and sending.
CANCEL_SECONDS = 23 * 3600
MAX_AGE_SECONDS = 35 * 24 * 3600


def client(api_key: str, api_base: str | None, base: str = "api"):
    """The SDK's client; `base`: which of its base addresses `api_base` replaces (a local
    server serves the API and the meter event stream alike)."""
    import stripe as sdk

    addresses = {base: api_base} if api_base else {}
    return sdk.StripeClient(api_key, base_addresses={"api": DEFAULT_API_BASE, **addresses},
                            max_network_retries=0)


def classify(error: BaseException) -> Failure | None:
    import stripe as sdk

    if not isinstance(error, sdk.StripeError):
        return None
    status = getattr(error, "http_status", None)
    transient = (status is None or status in (409, 429) or status >= 500
                 or isinstance(error, sdk.TemporarySessionExpiredError))  # renewed, retried
    return Failure(transient, status, error.user_message or str(error),
                   retry_after_seconds(error.headers))


class Stripe(SdkProvider):
    name = NAME
    classify = staticmethod(classify)
    batch_size = STREAM_BATCH

    def __init__(self, sdk_client, api: str = "auto", api_base: str | None = None):
        super().__init__(sdk_client)
        if api not in APIS:
            raise ValueError(f"--stripe-api must be one of {', '.join(APIS)}, got {api!r}")
        self.api, self._api_base = api, api_base
        self._lock = threading.Lock()
        self._session = None  # (expires_at ns, session id, stream client)
        self._known = None  # (active meter event names, customer ids), once per run

    # ---------------------------------------------------------------- v2 streams
    def batchable(self, entry: Entry) -> bool:
        return entry.object_type == STREAM

    def send_batch(self, entries: list[Entry]) -> list:
        """Streams the events that pass the checks Stripe makes asynchronously; returns
        per entry a Sent or the Failure v1 would have answered."""
        meters, customers = self._checked()
        results, events, session_id = [], [], None
        for entry in entries:
            body = entry.body()
            if body["event_name"] not in meters:
                results.append(Failure(False, 400, f"No active meter was found for "
                                                   f"event_name {body['event_name']!r}"))
            elif body["payload"]["stripe_customer_id"] not in customers:
                results.append(Failure(False, 400, f"No such customer: "
                                                   f"{body['payload']['stripe_customer_id']!r}"))
            else:
                results.append(None)
                events.append(body)
        if events:
            import stripe as sdk

            session_id, stream = self._stream()
            try:
                stream.v2.billing.meter_event_stream.create({"events": events})
            except sdk.TemporarySessionExpiredError:
                self._renew(session_id)  # and the retry policy sends the batch again
                raise
        sent = Sent({"via": "v2 meter_event_stream", "session": session_id,
                     "events": len(events)})
        return [result or sent._replace(provider_object=entry.idempotency_key)
                for entry, result in zip(entries, results)]

    def _stream(self) -> tuple:
        """The current session's id and a client on its token, renewed ahead of expiry."""
        with self._lock:
            if self._session is None or \
                    self._session[0] - SESSION_MARGIN_SECONDS * NS <= time.time_ns():
                session = self._client.v2.billing.meter_event_session.create()
                self._session = (parse_rfc3339(session.expires_at), session.id,
                                 client(session.authentication_token, self._api_base,
                                        "meter_events"))
            return self._session[1:]

    def _renew(self, session_id: str) -> None:
        """Stripe says the session expired: the next batch opens another."""
        with self._lock:
            if self._session is not None and self._session[1] == session_id:
                self._session = None

    def _checked(self) -> tuple[set, set]:
        with self._lock:
            if self._known is None:
                meters = {m.event_name for m in self._client.v1.billing.meters.list(
                    {"status": "active"}).auto_paging_iter() if m.status == "active"}
                customers = {c.id for c in self._client.v1.customers.list(
                    {"limit": 100}).auto_paging_iter()}
                self._known = (meters, customers)
            return self._known

    def _streamed(self, entry: Entry) -> Entry:
        """A planned v1 event as the same event on the stream (RFC 3339 timestamp)."""
        body = entry.body()
        body["timestamp"] = format_time(body["timestamp"] * NS)
        return replace(entry, object_type=STREAM, request=json.dumps(body, sort_keys=True))

    # ---------------------------------------------------------------- v1 and planning
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
        planned = self._plan(rows, state, context)
        events = sum(e.object_type == EVENT and e.status == PENDING for e in planned)
        if self.api == "v2" or (self.api == "auto" and events >= STREAM_FROM):
            return [self._streamed(e) if e.object_type == EVENT and e.status == PENDING else e
                    for e in planned]
        return planned

    def _plan(self, rows: list[UsageRow], state: dict[str, Entry], context: Context) -> list:
        held = holdings(state, EVENTS, superseding=(CANCEL,))
        made = generations(state, EVENTS)
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
                for window, live in holdings(state, EVENTS, superseding=(CANCEL,)).items()}

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


def build(api_key: str, api_base: str | None, stripe_api: str = "auto") -> Stripe:
    return Stripe(client(api_key, api_base), stripe_api, api_base)
