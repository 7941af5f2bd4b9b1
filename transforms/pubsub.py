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


PULL_WAIT_SECONDS = 2  # the emulator answers an idle pull empty a second before its deadline


class BoundedPulls:
    """A SubscriberClient whose pulls wait at most `seconds` for messages: an idle
    subscription is answered empty then, and so is a pull whose deadline passed (nothing
    was delivered, so nothing is lost)."""

    def __init__(self, client, seconds: int):
        self.client, self.seconds = client, seconds

    def pull(self, timeout=None, **request):
        from google.api_core.exceptions import DeadlineExceeded, RetryError
        from google.pubsub_v1.types import PullResponse

        try:
            return self.client.pull(timeout=min(timeout or self.seconds, self.seconds),
                                    **request)
        except (DeadlineExceeded, RetryError):
            return PullResponse()

    def __getattr__(self, name):
        return getattr(self.client, name)


def bound_direct_pulls(seconds: int) -> None:
    """Makes the DirectRunner's Pub/Sub read wait at most `seconds` per pull (Beam 2.77
    waits 30 s). The DirectRunner runs every step on its one worker thread, and a pull of
    an idle subscription holds it: an early pane's timer, and every step from the pane to
    the alert, waited behind it, so an event arriving alone was aggregated and alerted
    only when the pull gave up. Process-wide; the Dataflow source is not affected."""
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator as read

    if read._get_subscriber_client_state_unlocked.__func__ is not _bounded_client_state:
        read._unbounded_client_state = read._get_subscriber_client_state_unlocked
        read._get_subscriber_client_state_unlocked = classmethod(_bounded_client_state)
    read.pull_wait_seconds = seconds


def _bounded_client_state(cls, transform):
    state = cls._unbounded_client_state(transform)
    if not isinstance(state.client, BoundedPulls):
        state.client = BoundedPulls(state.client, cls.pull_wait_seconds)
    return state


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
