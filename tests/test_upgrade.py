"""`--update` of a running streaming job: the state it carries must still load.

Deduplication keeps, per identity, the first copy's metering signature and
position in a PickleCoder state (transforms/dedup.py). Pickle names classes by
module path, so moving or reshaping `schemas.events.Reading` would make every
running job's state unreadable after an update. The bytes below were written by
tallyflow 0.1.0 (pickle protocol 4, as Beam's PickleCoder); if this test fails,
keep an import shim at the old path or follow the drain-and-restore path in
docs/architecture.md.
"""
import base64
import pickle
from decimal import Decimal

from apache_beam.coders import PickleCoder

from schemas.events import Reading, UsageEvent
from transforms.dedup import _FirstCopyWithinHorizon, metering_signature

SEEN_STATE_0_1_0 = base64.b64decode(
    "gASVswAAAAAAAAAojAZjdXN0LTGUjAthcGkucmVxdWVzdJSKCBXNssd+aBYYjA5zY2hlbWFzLmV2ZW50"
    "c5SMB1JlYWRpbmeUk5SMCWFwaV9jYWxsc5SMD3sicmVnaW9uIjoiZXUifZSMB2RlY2ltYWyUjAdEZWNp"
    "bWFslJOUjAExlIWUUpSHlIGUaASMBnRva2Vuc5SMAnt9lGgJjAQxMi41lIWUUpSHlIGUhpR0lIwJcHVi"
    "c3ViOjQylIaULg==")


def event():
    return UsageEvent(
        source="svc", id="e-1", type="api.request", subject="cust-1",
        time_ns=1735689600123456789, raw="{}", position="pubsub:42", order=(0,),
        readings=(Reading("api_calls", '{"region":"eu"}', Decimal("1")),
                  Reading("tokens", "{}", Decimal("12.5"))))


def test_dedup_state_written_by_an_earlier_release_loads_and_matches():
    assert isinstance(_FirstCopyWithinHorizon.SEEN.coder, PickleCoder)
    signature, position = pickle.loads(SEEN_STATE_0_1_0)
    assert position == "pubsub:42"
    # an equal signature: a redelivered copy after the update is a duplicate, not a conflict
    assert signature == metering_signature(event())
    assert all(type(r) is Reading for r in signature[3])
