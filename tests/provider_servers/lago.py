"""A local Lago server for the event endpoints the exporter uses, after Lago's API
reference (getlago.com/docs/api-reference/events):

- POST /api/v1/events: {"event": {transaction_id, external_subscription_id, code,
  timestamp, properties}}; the subscription and the billable metric `code` must
  exist; `properties.value` must be a decimal number; the same transaction_id
  with the same body is the same event, with a different body a 422
  `value_already_exist`;
- GET /api/v1/events/{transaction_id}.
Errors have Lago's shape: {"status", "error", "code", "error_details"}; a 429
carries Lago's x-ratelimit-limit, -remaining and -reset headers.
"""
from __future__ import annotations

import itertools
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from http import HTTPStatus

from tests.provider_servers import ProviderServer, Reply, Request, canonical


class LagoServer(ProviderServer):
    api_key = "lago-test-key"

    def __init__(self, subscriptions=(), metrics=()):
        super().__init__()
        self.subscriptions = set(subscriptions)
        self.metrics = set(metrics)
        self.events: dict[str, dict] = {}  # transaction_id -> event
        self._bodies: dict[str, dict] = {}  # transaction_id -> the body that created it
        self._ids = itertools.count(1)

    def error(self, status, message, headers=None, code=None, details=None):
        headers = dict(headers or {})
        if status == 429:  # Lago's rate-limit headers (the SDK waits for x-ratelimit-reset)
            headers = {"x-ratelimit-limit": "100", "x-ratelimit-remaining": "0",
                       "x-ratelimit-reset": headers.pop("Retry-After", "1")}
        return Reply(status, {"status": status, "error": HTTPStatus(status).phrase,
                              "code": code or message, "error_details": details or {}},
                     headers)

    def handle(self, request: Request) -> Reply:
        if request.method == "POST" and request.path == "/api/v1/events":
            return self._create(request.body.get("event") or {})
        prefix = "/api/v1/events/"
        if request.method == "GET" and request.path.startswith(prefix):
            event = self.events.get(request.path[len(prefix):])
            if event is None:
                return self.error(404, "event_not_found", code="event_not_found")
            return Reply(200, {"event": event})
        return self.error(404, "not_found")

    def _create(self, body: dict) -> Reply:
        missing = [f for f in ("transaction_id", "external_subscription_id", "code")
                   if not body.get(f)]
        if missing:
            return self.error(422, "validation_errors", code="validation_errors",
                              details={f: ["value_is_mandatory"] for f in missing})
        if body["external_subscription_id"] not in self.subscriptions:
            return self.error(404, "subscription_not_found", code="subscription_not_found")
        if body["code"] not in self.metrics:
            return self.error(404, "billable_metric_not_found",
                              code="billable_metric_not_found")
        try:
            Decimal(str((body.get("properties") or {})["value"]))
            timestamp = int(body.get("timestamp"))
        except (KeyError, InvalidOperation, TypeError, ValueError):
            return self.error(422, "validation_errors", code="validation_errors",
                              details={"properties": ["value_is_invalid"]})
        sent = {k: body.get(k) for k in ("transaction_id", "external_subscription_id", "code",
                                         "timestamp", "properties")}
        existing = self.events.get(body["transaction_id"])
        if existing is not None:
            if canonical(self._bodies[body["transaction_id"]]) != canonical(sent):
                return self.error(422, "validation_errors", code="validation_errors",
                                  details={"transaction_id": ["value_already_exist"]})
            return Reply(200, {"event": existing})
        event = {"lago_id": f"evt-{next(self._ids)}", **sent,
                 "timestamp": datetime.fromtimestamp(timestamp, timezone.utc).isoformat(),
                 "lago_customer_id": None, "lago_subscription_id": None,
                 "precise_total_amount_cents": None,
                 "created_at": datetime.now(timezone.utc).isoformat()}
        self.events[body["transaction_id"]] = event
        self._bodies[body["transaction_id"]] = sent
        return Reply(200, {"event": event})

    def total(self, subscription: str, code: str, start: int, end: int) -> Decimal:
        """What Lago aggregates (sum of `value`) for a subscription and metric in [start, end)."""
        return sum((Decimal(str(e["properties"]["value"])) for e in self.events.values()
                    if e["external_subscription_id"] == subscription and e["code"] == code
                    and start <= int(self._bodies[e["transaction_id"]]["timestamp"]) < end),
                   Decimal(0))
