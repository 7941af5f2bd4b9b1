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
  response; other parameters are an `idempotency_error`;
- GET /v1/customers: the customers, `limit` per page after `starting_after`.
And the v2 meter event streams (docs.stripe.com/api/v2/billing-meter-stream), JSON:
- POST /v2/billing/meter_event_session (API key): a session whose
  `authentication_token` is valid for 15 minutes (`expires_at`, RFC 3339);
- POST /v2/billing/meter_event_stream (Bearer the session token, not the API
  key): `events`, 1 to 100, each with `event_name` and `payload` (else the whole
  request is a 400); an expired token is a 401 `temporary_session_expired` /
  `billing_meter_event_session_expired`. The answer is `{}` and events are
  processed asynchronously: one that fails the v1 checks (meter, customer, value,
  timestamp) or reuses an identifier with a different body is dropped and
  reported in `error_reports` (Stripe's meter error reports), never answered; an
  identifier seen before with the same body is the same event.
Errors have Stripe's shape: {"error": {"type", "code", "message"}}.
"""
from __future__ import annotations

import itertools
import json
import re
import secrets
from datetime import datetime, timezone

from tests.provider_servers import ProviderServer, Reply, Request, canonical

DAY = 24 * 3600
STREAM = "/v2/billing/meter_event_stream"


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
        self.sessions: dict[str, dict] = {}  # token -> {id, expires_at (s), calls}
        self.session_seconds = 15 * 60
        self.calls_per_session: int | None = None  # test control: then the token expires
        self.stream_batches: list[int] = []  # events per accepted stream request
        self.error_reports: list[dict] = []  # events the stream dropped, and why

    def parse_body(self, content_type: str, raw: bytes) -> dict:
        from urllib.parse import parse_qsl

        if content_type.startswith("application/json"):  # API v2
            return json.loads(raw) if raw else {}
        return _nest(parse_qsl(raw.decode(), keep_blank_values=True))

    def authorised(self, request: Request) -> bool:
        """The stream takes a session token, everything else the API key."""
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        return bearer in self.sessions if request.path == STREAM else bearer == self.api_key

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
        if request.method == "GET" and path == "/v1/customers":
            return self._list_customers(request.query)
        if request.method == "POST" and path == "/v2/billing/meter_event_session":
            return self._session()
        if request.method == "POST" and path == STREAM:
            return self._stream(request)
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

    def _list_customers(self, query: dict) -> Reply:
        ordered = sorted(self.customers)
        after = query.get("starting_after")
        start = ordered.index(after) + 1 if after in self.customers else 0
        limit = min(100, int(query.get("limit") or 10))
        page = ordered[start:start + limit]
        return Reply(200, {"object": "list", "url": "/v1/customers",
                           "has_more": start + limit < len(ordered),
                           "data": [{"id": c, "object": "customer"} for c in page]})

    def _session(self) -> Reply:
        token, now = f"mes_tok_{secrets.token_hex(8)}", self.now()
        session = {"id": f"mes_{next(self._ids):06d}", "expires_at": now + self.session_seconds,
                   "calls": 0}
        self.sessions[token] = session
        return Reply(200, {"id": session["id"], "object": "v2.billing.meter_event_session",
                           "authentication_token": token, "livemode": False,
                           "created": _rfc3339(now), "expires_at": _rfc3339(session["expires_at"])})

    def _stream(self, request: Request) -> Reply:
        session = self.sessions[request.headers["authorization"].removeprefix("Bearer ")]
        if self.now() >= session["expires_at"] or (
                self.calls_per_session is not None
                and session["calls"] >= self.calls_per_session):
            return self.error(401, "The temporary session token has expired.",
                              type="temporary_session_expired",
                              code="billing_meter_event_session_expired")
        events = request.body.get("events")
        if not isinstance(events, list) or not 1 <= len(events) <= 100:
            return self.error(400, "events must list 1 to 100 meter events",
                              code="parameter_invalid")
        if not all(isinstance(e, dict) and isinstance(e.get("event_name"), str)
                   and isinstance(e.get("payload"), dict) for e in events):
            return self.error(400, "every event needs an event_name and a payload",
                              code="parameter_missing")
        session["calls"] += 1
        self.stream_batches.append(len(events))
        for event in events:  # asynchronous at Stripe: a bad event is reported, not answered
            timestamp = event.get("timestamp")
            if timestamp is not None:
                timestamp = int(datetime.fromisoformat(timestamp).timestamp())
            reply = self._meter_event({**event, "timestamp": timestamp})
            if reply.status != 200:
                self.error_reports.append({"identifier": event.get("identifier"),
                                           **reply.body["error"]})
        return Reply(200, {})

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


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")
