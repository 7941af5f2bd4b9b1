"""Each provider's local server set up for export tests: customers, meters, and how
to read what the provider would bill (its own aggregation), independently of the
exporter."""
from __future__ import annotations

from decimal import Decimal

from tallyflow.export.mapping import Mapping
from tallyflow.export.quantise import round_once

NS = 1_000_000_000


class StripeCase:
    name, key_env, event_path = "stripe", "STRIPE_API_KEY", "/v1/billing/meter_events"
    options: dict = {}  # for the provider's build()

    def __init__(self, subjects, meters: dict):
        from tallyflow.export.stripe import client
        from tests.provider_servers.stripe import StripeServer

        self.server = StripeServer()
        self.base = self.server.start()
        sdk = client(self.server.api_key, self.base)
        for event_name in meters.values():
            sdk.v1.billing.meters.create({"display_name": event_name, "event_name": event_name})
        self.mapping = Mapping({s: sdk.v1.customers.create({}).id for s in subjects},
                               dict(meters))

    def held(self, subject, meter, start_ns, end_ns) -> Decimal:
        return Decimal(self.server.total(self.mapping.meter(meter),
                                         self.mapping.customer(subject),
                                         start_ns // NS, end_ns // NS))

    def expected(self, exact: Decimal) -> Decimal:
        return Decimal(round_once(exact))

    def tamper(self):
        """Cancel one live event behind tallyflow's back."""
        next(e for e in self.server.events.values() if not e["cancelled"])["cancelled"] = True


class StripeStreamCase(StripeCase):
    """Stripe with every event on the v2 meter event stream (`--stripe-api v2`)."""

    event_path, options = "/v2/billing/meter_event_stream", {"stripe_api": "v2"}


class OrbCase:
    name, key_env, event_path = "orb", "ORB_API_KEY", "/v1/ingest"
    options: dict = {}

    def __init__(self, subjects, meters: dict):
        from tests.provider_servers.orb import OrbServer

        self.server = OrbServer()
        self.base = self.server.start() + "/v1"
        self.mapping = Mapping({s: f"ext-{s}" for s in subjects}, dict(meters))

    def held(self, subject, meter, start_ns, end_ns) -> Decimal:
        return self.server.total(self.mapping.customer(subject), self.mapping.meter(meter),
                                 start_ns / NS, end_ns / NS)

    def expected(self, exact: Decimal) -> Decimal:
        return exact

    def tamper(self):
        """Drop one event behind tallyflow's back."""
        self.server.events.pop(next(iter(self.server.events)))


class LagoCase:
    name, key_env, event_path = "lago", "LAGO_API_KEY", "/api/v1/events"
    options: dict = {}

    def __init__(self, subjects, meters: dict):
        from tests.provider_servers.lago import LagoServer

        self.mapping = Mapping({s: f"sub-{s}" for s in subjects}, dict(meters))
        self.server = LagoServer(self.mapping.customers.values(), meters.values())
        self.base = self.server.start()

    def held(self, subject, meter, start_ns, end_ns) -> Decimal:
        return self.server.total(self.mapping.customer(subject), self.mapping.meter(meter),
                                 start_ns // NS, end_ns // NS)

    def expected(self, exact: Decimal) -> Decimal:
        return exact

    def tamper(self):
        """Change one event's value behind tallyflow's back."""
        next(iter(self.server.events.values()))["properties"]["value"] = "123456"


CASES = {"stripe": StripeCase, "orb": OrbCase, "lago": LagoCase}
# the unit tests' cases: every provider, and Stripe's second API
API_CASES = {**CASES, "stripe-v2": StripeStreamCase}
