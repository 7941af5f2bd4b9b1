"""`--update` of a running streaming job: the state it carries must still load.

Deduplication keeps, per identity, the first copy's signature digest and
position (transforms/dedup.py's SeenCoder). Release 0.1.0 kept the signature
itself, pickled by Beam's PickleCoder, and a job updated in place still holds
such state: SeenCoder decodes it to its digest. Pickle names classes by module
path, so moving or reshaping `schemas.events.Reading` would make that state
unreadable. The bytes below were written by tallyflow 0.1.0 (pickle protocol 4);
if this test fails, keep an import shim at the old path or follow the
drain-and-restore path in docs/architecture.md.
"""
import base64
import pickle
from decimal import Decimal

from schemas.events import Reading, UsageEvent
from schemas.metering import signature_digest
from transforms.dedup import SeenCoder, _FirstCopyWithinHorizon, metering_signature

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
    signature, position = pickle.loads(SEEN_STATE_0_1_0)
    assert position == "pubsub:42"
    # an equal signature: a redelivered copy after the update is a duplicate, not a conflict
    assert signature == metering_signature(event())
    assert all(type(r) is Reading for r in signature[3])


def test_the_state_coder_reads_an_earlier_release_state_as_its_digest():
    digest, position = _FirstCopyWithinHorizon.SEEN.coder.decode(SEEN_STATE_0_1_0)
    assert position == "pubsub:42"
    assert digest == signature_digest(metering_signature(event()))
    other = event()._replace(readings=event().readings[:1])
    assert digest != signature_digest(metering_signature(other))


def test_the_state_coder_round_trips_its_own_form_in_few_bytes():
    coder = SeenCoder()
    seen = (signature_digest(metering_signature(event())), "11862383429361714#12")
    encoded = coder.encode(seen)
    assert coder.decode(encoded) == seen
    assert len(encoded) == 1 + 16 + len("11862383429361714#12")
    replayed = (seen[0], "replay:\ud800é")  # any text survives, as stored
    assert coder.decode(coder.encode(replayed)) == replayed
