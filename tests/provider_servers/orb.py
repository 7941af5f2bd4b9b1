"""A local Orb server for the endpoints the exporter uses, after Orb's API reference
(docs.withorb.com/api-reference: ingest, backfills, event search):

- POST /v1/ingest[?backfill_id=]: {"events": [{event_name, external_customer_id,
  timestamp, idempotency_key, properties}]}, at most 500; answers 200 with
  `validation_failed` listing each event it refused: a missing field, a
  timestamp outside the grace period (without a backfill) or outside the
  backfill's timeframe or customer, or an idempotency_key already used for a
  different event (the same event again is deduplicated);
- POST /v1/events/backfills (with `Idempotency-Key`: the same key returns the
  same backfill), GET /v1/events/backfills/{id}, POST .../{id}/close (the
  backfill's events replace the customer's events in the timeframe when
  `replace_existing_events`), POST .../{id}/revert;
- POST /v1/events/search: {"event_ids": [...]} -> the events with those ids
  (Orb's event id is its idempotency_key).
Errors have Orb's shape: {"type", "status", "title", "detail"}.
"""
from __future__ import annotations

import itertools
from datetime import datetime, timezone
from http import HTTPStatus

from tests.provider_servers import ProviderServer, Reply, Request, canonical

GRACE = 12 * 3600


def _seconds(text) -> float:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


class OrbServer(ProviderServer):
    api_key = "orb-test-key"

    def __init__(self):
        super().__init__()
        self.events: dict[str, dict] = {}  # idempotency_key -> event (live)
        self.backfills: dict[str, dict] = {}
        self._staged: dict[str, dict] = {}  # backfill id -> {key: event}
        self._replaced: dict[str, dict] = {}  # backfill id -> events it replaced
        self._added: dict[str, list] = {}  # backfill id -> keys of the events it added
        self._by_idempotency: dict[str, str] = {}  # Idempotency-Key -> backfill id
        self._ids = itertools.count(1)

    def error(self, status, message, headers=None):
        return Reply(status, {"type": f"https://docs.withorb.com/reference/error-responses"
                                      f"#{status}", "status": status,
                              "title": HTTPStatus(status).phrase, "detail": message},
                     headers or {})

    def handle(self, request: Request) -> Reply:
        path, body = request.path, request.body
        if request.method == "POST" and path == "/v1/ingest":
            return self._ingest(body.get("events"), request.query.get("backfill_id"))
        if request.method == "POST" and path == "/v1/events/search":
            ids = set(body.get("event_ids") or [])
            return Reply(200, {"data": [self._public(e) for k, e in self.events.items()
                                        if k in ids]})
        if request.method == "POST" and path == "/v1/events/backfills":
            return self._create_backfill(body, request.headers.get("idempotency-key"))
        parts = path.split("/")
        if path.startswith("/v1/events/backfills/") and parts[4] in self.backfills:
            backfill = self.backfills[parts[4]]
            action = parts[5] if len(parts) > 5 else None
            if request.method == "GET" and action is None:
                return Reply(200, backfill)
            if request.method == "POST" and action == "close":
                return self._close(backfill)
            if request.method == "POST" and action == "revert":
                return self._revert(backfill)
        return self.error(404, f"no route for {request.method} {path}")

    @staticmethod
    def _public(event: dict) -> dict:
        return {"id": event["idempotency_key"], "customer_id": event["customer_id"],
                "external_customer_id": event["external_customer_id"],
                "event_name": event["event_name"], "properties": event["properties"],
                "timestamp": event["timestamp"], "deprecated": False}

    def _ingest(self, events, backfill_id) -> Reply:
        if not isinstance(events, list) or not 0 < len(events) <= 500:
            return self.error(400, "events must be a list of 1 to 500 events")
        backfill = self.backfills.get(backfill_id) if backfill_id else None
        if backfill_id and (backfill is None or backfill["status"] != "pending"):
            return self.error(400, f"backfill {backfill_id} is not open")
        failed, now = [], self.now()
        for event in events:
            problems = [f"{f} is required" for f in
                        ("event_name", "idempotency_key", "timestamp", "external_customer_id")
                        if not event.get(f)]
            if not problems:
                problems = self._problems(event, backfill, now)
            if problems:
                failed.append({"idempotency_key": str(event.get("idempotency_key")),
                               "validation_errors": problems})
                continue
            stored = {**event, "customer_id": f"orb-{event['external_customer_id']}"}
            (self._staged[backfill_id] if backfill else self.events)[
                event["idempotency_key"]] = stored
        return Reply(200, {"validation_failed": failed, "debug": None})

    def _problems(self, event, backfill, now) -> list[str]:
        try:
            at = _seconds(event["timestamp"])
        except ValueError:
            return ["timestamp is not an ISO 8601 date-time"]
        if not isinstance(event.get("properties", {}), dict):
            return ["properties must be an object"]
        key = event["idempotency_key"]
        seen = self.events.get(key) or (self._staged[backfill["id"]].get(key)
                                        if backfill else None)
        if seen is not None:
            same = canonical({k: seen.get(k) for k in event}) == canonical(event)
            return [] if same else ["idempotency_key was already used for a different event"]
        if backfill is None:
            if not now - GRACE <= at <= now + 300:
                return ["timestamp is outside the grace period: use a backfill"]
        elif not (_seconds(backfill["timeframe_start"]) <= at < _seconds(
                backfill["timeframe_end"])) or event["external_customer_id"] != backfill[
                "external_customer_id"]:
            return ["event is outside the backfill's timeframe or customer"]
        return []

    def _create_backfill(self, body, idempotency_key) -> Reply:
        if idempotency_key in self._by_idempotency:
            return Reply(200, self.backfills[self._by_idempotency[idempotency_key]])
        try:
            start, end = _seconds(body["timeframe_start"]), _seconds(body["timeframe_end"])
        except (KeyError, ValueError):
            return self.error(400, "timeframe_start and timeframe_end are required date-times")
        if end <= start or end > self.now():
            return self.error(400, "the timeframe must be non-empty and in the past")
        for other in self.backfills.values():
            if (other["status"] == "pending"
                    and other["external_customer_id"] == body.get("external_customer_id")
                    and _seconds(other["timeframe_start"]) < end
                    and start < _seconds(other["timeframe_end"])):
                return self.error(409, f"backfill {other['id']} overlaps and is still open")
        backfill = {"id": f"bf_{next(self._ids)}", "status": "pending", "close_time": None,
                    "created_at": _iso(self.now()), "reverted_at": None,
                    "customer_id": f"orb-{body.get('external_customer_id')}",
                    "external_customer_id": body.get("external_customer_id"),
                    "events_ingested": 0,
                    "replace_existing_events": bool(body.get("replace_existing_events")),
                    "timeframe_start": _iso(start), "timeframe_end": _iso(end),
                    "deprecation_filter": None}
        self.backfills[backfill["id"]] = backfill
        self._staged[backfill["id"]] = {}
        if idempotency_key:
            self._by_idempotency[idempotency_key] = backfill["id"]
        return Reply(200, backfill)

    def _in_timeframe(self, backfill, event) -> bool:
        return (event["external_customer_id"] == backfill["external_customer_id"]
                and _seconds(backfill["timeframe_start"]) <= _seconds(event["timestamp"])
                < _seconds(backfill["timeframe_end"]))

    def _close(self, backfill) -> Reply:
        if backfill["status"] != "pending":
            return Reply(200, backfill)
        staged = self._staged.pop(backfill["id"])
        replaced = {k: e for k, e in self.events.items() if self._in_timeframe(backfill, e)} \
            if backfill["replace_existing_events"] else {}
        for key in replaced:
            del self.events[key]
        self.events.update(staged)
        self._replaced[backfill["id"]] = replaced
        backfill.update(status="reflected", close_time=_iso(self.now()),
                        events_ingested=len(staged))
        self._added[backfill["id"]] = list(staged)
        return Reply(200, backfill)

    def _revert(self, backfill) -> Reply:
        if backfill["status"] == "reflected":
            for key in self._added.pop(backfill["id"]):
                self.events.pop(key, None)
            self.events.update(self._replaced.pop(backfill["id"]))
        self._staged.pop(backfill["id"], None)
        backfill.update(status="reverted", reverted_at=_iso(self.now()))
        return Reply(200, backfill)

    def total(self, customer: str, event_name: str, start: float, end: float):
        """What Orb sums (`SUM(CAST(value AS DECIMAL))`) for a customer and event name in
        [start, end)."""
        from decimal import Decimal

        return sum((Decimal(e["properties"]["value"]) for e in self.events.values()
                    if e["external_customer_id"] == customer and e["event_name"] == event_name
                    and start <= _seconds(e["timestamp"]) < end), Decimal(0))
