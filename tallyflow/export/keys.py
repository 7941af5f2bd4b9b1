"""Deterministic keys for what the exporter sends: the same usage row at the same
revision always gets the same key, so a retry or a rerun after a crash is
deduplicated by the provider (Stripe `identifier`, Orb `idempotency_key`, Lago
`transaction_id`)."""
from __future__ import annotations

import hashlib
import json


def export_key(provider: str, kind: str, *parts) -> str:
    """`tf-<provider>-<kind>-<32 hex>` from the parts (subject, meter, dimensions,
    window, revision, generation ...); short enough for every provider's limit."""
    digest = hashlib.sha256(json.dumps([provider, kind, *map(str, parts)]).encode()).hexdigest()
    return f"tf-{provider}-{kind}-{digest[:32]}"
