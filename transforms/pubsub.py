"""Reading usage messages from Pub/Sub, and publishing dead letters back to it."""
from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage, ReadFromPubSub, WriteToPubSub

from schemas.events import ATTRIBUTE_VALUE_BYTES, Payload
from transforms.rows import payload_bytes
from transforms.runner import is_dataflow


class ReadUsageMessages(beam.PTransform):
    """Pub/Sub -> Payloads (message id, (), data, ingest ns, attributes) for ParseEvents.

    The ingest time is taken when the message enters the pipeline: it judges
    FUTURE_TIME and too-late events, and is stored with every accepted event.

    `id_label` and `timestamp_attribute` are passed on Dataflow only, whose native
    source honours them. The DirectRunner raises NotImplementedError for id_label
    (and keeps running without reading), and a malformed timestamp attribute makes
    its source raise and redeliver the whole pull forever; tallyflow takes event
    time from the payload anyway, so locally both are left out.
    """

    def __init__(self, subscription: str, runner: str | None, timestamp_attribute: str | None,
                 id_label: str | None = None):
        super().__init__()
        self._subscription = subscription
        self._extras = is_dataflow(runner)
        self._timestamp_attribute = timestamp_attribute
        self._id_label = id_label

    def expand(self, pbegin):
        extras = {}
        if self._extras:
            extras = {"timestamp_attribute": self._timestamp_attribute or None,
                      "id_label": self._id_label or None}
        return (pbegin
                | "Read" >> ReadFromPubSub(subscription=self._subscription,
                                           with_attributes=True, **extras)
                | "Unwrap" >> beam.Map(lambda m: Payload(m.message_id or "", (), m.data,
                                                         time.time_ns(),
                                                         dict(m.attributes or {}))))


def dead_letter_message(rejection) -> PubsubMessage:
    """A rejection as a Pub/Sub message: the payload's bytes as received, its attributes,
    and the reason, each attribute value cut to Pub/Sub's 1024 bytes on a character
    boundary (an over-long value would make the publish fail, again and again)."""
    attributes = {**(rejection.attributes or {}), "error_code": rejection.error_code,
                  "error_message": rejection.error_message, "position": rejection.position}
    return PubsubMessage(payload_bytes(rejection),
                         {k: _clip_bytes(str(v)) for k, v in attributes.items()})


def _clip_bytes(text: str) -> str:
    return text.encode("utf-8", "replace")[:ATTRIBUTE_VALUE_BYTES].decode("utf-8", "ignore")


class PublishMessages(beam.PTransform):
    """Elements -> a Pub/Sub topic, each as the PubsubMessage `to_message` makes of it."""

    def __init__(self, topic: str, to_message):
        super().__init__()
        self._topic = topic
        self._to_message = to_message

    def expand(self, elements):
        return (elements
                | "ToMessage" >> beam.Map(self._to_message)
                | "Publish" >> WriteToPubSub(self._topic, with_attributes=True))


class PublishDeadLetters(PublishMessages):
    """Rejections -> a Pub/Sub topic, original payload as data, reason as attributes,
    so a producer's consumer can fix and re-send them."""

    def __init__(self, topic: str):
        super().__init__(topic, dead_letter_message)
