"""A local Stripe server for the Billing Meters endpoints the exporter uses, after
Stripe's API reference (docs.stripe.com/api/billing/meter-event and friends):

- POST /v1/customers, POST and GET /v1/billing/meters (test setup, meter lookup);
- POST /v1/billing/meter_events: form-encoded; `event_name` of an active meter,
  `payload[stripe_customer_id]` of an existing customer, `payload[value]` a
  whole number, `timestamp` within the past 35 days and at most 5 minutes
  ahead; `identifier` unique (the same identifier with the same body returns
  the event again, with a different body is a 400);
- POST /v1/billing/meter_event_adjustments: `type=cancel`, `cancel[identifier]`
  of an event received less than 24 hours ago;
- GET /v1/billing/meters/{id}/event_summaries: the sum over a customer and
  [start_time, end_time) of the events not cancelled;
- `Idempotency-Key` on every POST: the same key and parameters replay the first
  response; other parameters are an `idempotency_error`.
Errors have Stripe's shape: {"error": {"type", "code", "message"}}.
"""
from __future__ import annotations

import itertools
import re

from tests.provider_servers import ProviderServer, Reply, Request, canonical

DAY = 24 * 3600


def _nest(pairs) -> dict:
    """Stripe's form encoding (`payload[value]=3`) -> nested dicts."""
    out: dict = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


class StripeServer(ProviderServer):
    api_key = "sk_test_tallyflow"

    def __init__(self):
        super().__init__()
        self.customers: set[str] = set()
        self.meters: dict[str, dict] = {}  # id -> meter
        self.events: dict[str, dict] = {}  # identifier -> event (+ created, cancelled)
        self.adjustments: list[dict] = []
        self._idempotent: dict[str, tuple[str, Reply]] = {}
        self._ids = itertools.count(1)

    def parse_body(self, content_type: str, raw: bytes) -> dict:
        from urllib.parse import parse_qsl

        return _nest(parse_qsl(raw.decode(), keep_blank_values=True))

    def error(self, status, message, headers=None, code=None, type="invalid_request_error"):
        if status == 429:
            type, code = "invalid_request_error", code or "rate_limit"
        elif status >= 500:
            type = "api_error"
        return Reply(status, {"error": {"type": type, "code": code, "message": message}},
                     headers or {})

    def handle(self, request: Request) -> Reply:
        key = request.headers.get("idempotency-key")
        fingerprint = canonical([request.method, request.path, request.body])
        if request.method == "POST" and key in self._idempotent:
            seen, reply = self._idempotent[key]
            if seen != fingerprint:
                return self.error(400, "Keys for idempotent requests can only be used with "
                                       "the same parameters they were first used with.",
                                  type="idempotency_error")
            return reply
        reply = self._route(request)
        if request.method == "POST" and key and reply.status < 500:
            self._idempotent[key] = (fingerprint, reply)
        return reply

    def _route(self, request: Request) -> Reply:
        path, body = request.path, request.body
        if request.method == "POST" and path == "/v1/customers":
            customer = f"cus_{next(self._ids):06d}"
            self.customers.add(customer)
            return Reply(200, {"id": customer, "object": "customer"})
        if path == "/v1/billing/meters":
            return self._create_meter(body) if request.method == "POST" else Reply(
                200, {"object": "list", "data": list(self.meters.values()), "has_more": False,
                      "url": path})
        if request.method == "POST" and path == "/v1/billing/meter_events":
            return self._meter_event(body)
        if request.method == "POST" and path == "/v1/billing/meter_event_adjustments":
            return self._adjustment(body)
        summaries = re.fullmatch(r"/v1/billing/meters/([^/]+)/event_summaries", path)
        if request.method == "GET" and summaries:
            return self._summaries(summaries.group(1), request.query)
        return self.error(404, f"Unrecognized request URL ({request.method}: {path})",
                          code="resource_missing")

    def _create_meter(self, body) -> Reply:
        name = body.get("event_name")
        if not name or not body.get("display_name"):
            return self.error(400, "Missing required param: event_name or display_name",
                              code="parameter_missing")
        meter = {"id": f"mtr_{next(self._ids):06d}", "object": "billing.meter",
                 "event_name": name, "display_name": body["display_name"], "status": "active",
                 "default_aggregation": {"formula": (body.get("default_aggregation") or {})
                                         .get("formula", "sum")},
                 "customer_mapping": {"event_payload_key": "stripe_customer_id",
                                      "type": "by_id"},
                 "value_settings": {"event_payload_key": "value"}}
        self.meters[meter["id"]] = meter
        return Reply(200, meter)

    def _meter_event(self, body) -> Reply:
        name, payload = body.get("event_name"), body.get("payload") or {}
        if not any(m["event_name"] == name and m["status"] == "active"
                   for m in self.meters.values()):
            return self.error(400, f"No active meter was found for event_name {name!r}",
                              code="resource_missing")
        customer, value = payload.get("stripe_customer_id"), payload.get("value", "")
        if customer not in self.customers:
            return self.error(400, f"No such customer: {customer!r}", code="resource_missing")
        if not re.fullmatch(r"\d{1,15}", value):
            return self.error(400, f"payload[value] must be a whole number, got {value!r}",
                              code="parameter_invalid_integer")
        now = self.now()
        timestamp = int(body.get("timestamp") or now)
        if not now - 35 * DAY <= timestamp <= now + 300:
            return self.error(400, "timestamp must be within the past 35 calendar days or up "
                                   "to 5 minutes in the future", code="timestamp_out_of_range")
        identifier = body.get("identifier") or f"gen_{next(self._ids)}"
        event = {"object": "billing.meter_event", "event_name": name, "identifier": identifier,
                 "payload": payload, "timestamp": timestamp, "livemode": False}
        existing = self.events.get(identifier)
        if existing is not None:
            if canonical({k: existing[k] for k in event}) != canonical(event):
                return self.error(400, f"An event with identifier {identifier} already "
                                       f"exists with a different body",
                                  code="duplicate_meter_event")
            return Reply(200, {k: existing[k] for k in event} | {"created": existing["created"]})
        self.events[identifier] = event | {"created": int(now), "cancelled": False}
        return Reply(200, event | {"created": int(now)})

    def _adjustment(self, body) -> Reply:
        identifier = (body.get("cancel") or {}).get("identifier")
        if body.get("type") != "cancel" or not identifier:
            return self.error(400, "type must be cancel, with cancel[identifier]",
                              code="parameter_missing")
        event = self.events.get(identifier)
        if event is None or event["event_name"] != body.get("event_name"):
            return self.error(400, f"No meter event with identifier {identifier}",
                              code="resource_missing")
        if self.now() - event["created"] > DAY:
            return self.error(400, "Meter events can only be cancelled within 24 hours",
                              code="meter_event_adjustment_window_expired")
        event["cancelled"] = True
        adjustment = {"object": "billing.meter_event_adjustment", "event_name":
                      event["event_name"], "type": "cancel", "status": "pending",
                      "cancel": {"identifier": identifier}, "livemode": False}
        self.adjustments.append(adjustment)
        return Reply(200, adjustment)

    def _summaries(self, meter_id: str, query: dict) -> Reply:
        meter = self.meters.get(meter_id)
        if meter is None:
            return self.error(404, f"No such billing meter: {meter_id}", code="resource_missing")
        try:
            customer, start, end = query["customer"], int(query["start_time"]), \
                int(query["end_time"])
        except (KeyError, ValueError):
            return self.error(400, "customer, start_time and end_time are required",
                              code="parameter_missing")
        total = self.total(meter["event_name"], customer, start, end)
        return Reply(200, {"object": "list", "has_more": False, "url": "", "data": [{
            "object": "billing.meter_event_summary", "id": f"mtrusg_{meter_id}_{customer}",
            "meter": meter_id, "aggregated_value": total, "start_time": start,
            "end_time": end, "livemode": False}]})

    def total(self, event_name: str, customer: str, start: int, end: int) -> int:
        """What Stripe bills a customer for a meter over [start, end)."""
        return sum(int(e["payload"]["value"]) for e in self.events.values()
                   if e["event_name"] == event_name and not e["cancelled"]
                   and e["payload"]["stripe_customer_id"] == customer
                   and start <= e["timestamp"] < end)
