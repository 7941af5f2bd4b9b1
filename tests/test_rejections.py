"""What a dead letter carries (SPEC §4 `dead_letter`): the payload as received (a batch
element's own JSON), where it came from, the event's identity when it has one, the
Pub/Sub attributes and the ingest time, and a message naming what was wrong."""
import json

import pytest

from schemas.events import Limits, Rejection, parse_payload
from schemas.values import parse_rfc3339
from tests.conftest import event

INGEST = parse_rfc3339("2026-11-21T00:00:00.123456789Z")
ATTRIBUTES = {"ce-type": "call"}


@pytest.fixture
def rejected(catalog):
    def parse(payload: bytes) -> list[Rejection]:
        results = parse_payload(payload, "m-1", (1,), catalog, Limits(now_ns=None), INGEST,
                                ATTRIBUTES)
        assert all(isinstance(r, Rejection) for r in results)
        return results
    return parse


def test_a_rejected_event_keeps_its_payload_identity_attributes_and_ingest_time(rejected):
    doc = event(id="neg", source="//s", data={"amount": "-1", "user": "u"})
    payload = json.dumps(doc).encode()
    [r] = rejected(payload)
    assert r == Rejection("VALUE_NEGATIVE", r.error_message, payload.decode(), "m-1", "//s",
                          "neg", ATTRIBUTES, INGEST)


def test_a_batch_element_is_dead_lettered_as_its_own_json(rejected):
    bad = event(id="neg", source="//s", data={"amount": "-1", "user": "ü"})
    [r] = rejected(json.dumps([bad]).encode())
    assert (r.payload, r.position, r.event_source, r.event_id, r.attributes, r.ingest_ns) == (
        json.dumps(bad, separators=(",", ":"), ensure_ascii=False), "m-1#0", "//s", "neg",
        ATTRIBUTES, INGEST)


@pytest.mark.parametrize("element,kind", [
    (True, "boolean"), (None, "null"), ([], "array"), ("text", "string"), (7, "number")])
def test_a_batch_element_that_is_no_object_says_what_it_is(rejected, element, kind):
    [r] = rejected(json.dumps([element]).encode())
    assert (r.error_code, r.error_message) == ("NOT_AN_OBJECT",
                                               f"event is a JSON {kind}, not an object")
