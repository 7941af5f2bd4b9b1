"""Which provider customer and meter a tallyflow subject and meter are.

A YAML (or JSON) file, one section per provider:

    stripe:
      customers: {acme: cus_Q1w2e3}        # subject -> Stripe customer id
      meters: {api_calls: api_calls}       # meter -> Stripe meter event_name
    orb:
      customers: {acme: acme}              # subject -> Orb external_customer_id
      meters: {api_calls: api_calls}       # meter -> Orb event_name
    lago:
      customers: {acme: sub_acme}          # subject -> Lago external_subscription_id
      meters: {api_calls: api_calls}       # meter -> billable metric code

A subject or meter the file does not name maps to itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

PROVIDERS = ("stripe", "orb", "lago")


@dataclass(frozen=True)
class Mapping:
    customers: dict = field(default_factory=dict)
    meters: dict = field(default_factory=dict)

    def customer(self, subject: str) -> str:
        return self.customers.get(subject, subject)

    def meter(self, meter: str) -> str:
        return self.meters.get(meter, meter)


def load_mapping(path: str | None, provider: str) -> Mapping:
    if not path:
        return Mapping()
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"mapping file {path}: {error}") from None
    section = document.get(provider) or {}
    if not isinstance(section, dict):
        raise ValueError(f"mapping file {path}: `{provider}` must be a mapping")
    parts = {}
    for name in ("customers", "meters"):
        part = section.get(name) or {}
        if not isinstance(part, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in part.items()):
            raise ValueError(f"mapping file {path}: `{provider}.{name}` must map names "
                             f"to non-empty strings")
        parts[name] = dict(part)
    return Mapping(**parts)
