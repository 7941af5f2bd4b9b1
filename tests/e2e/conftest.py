"""Fixtures for end-to-end tests on the local stack (real emulators on loopback).

The stack starts once per session in a temporary run dir and is always torn
down, even when a test (or the start itself) fails.
"""
import dataclasses
import time

import pytest

from tallyflow.local.stack import down, provision, up


@pytest.fixture(scope="session")
def local_stack_run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("local-stack")


@pytest.fixture(scope="session")
def local_stack(local_stack_run_dir):
    try:
        yield up(local_stack_run_dir, progress=lambda message: None)
    finally:
        down(local_stack_run_dir)


@pytest.fixture(scope="module")
def stack(local_stack, request):
    """The session's stack with a dataset of the test module's own (its DATASET), ready."""
    own = dataclasses.replace(local_stack, dataset=request.module.DATASET)
    provision(own)
    return own


@pytest.fixture(scope="session")
def bq_client(local_stack):
    client = local_stack.bigquery_client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def pubsub(local_stack):
    return PubSub(local_stack)


class PubSub:
    """Publish and pull on the stack's topics, with bounded waits."""

    def __init__(self, stack):
        self.stack = stack
        self.publisher = stack.publisher_client()
        self.subscriber = stack.subscriber_client()

    def publish(self, data: bytes, topic: str | None = None, **attributes) -> str:
        return self.publisher.publish(self.stack.topic_path(topic), data,
                                      **attributes).result(timeout=10)

    def drain(self, subscription: str | None = None) -> None:
        """Acknowledge whatever earlier tests left in the subscription."""
        while self.pull(subscription, wait=0.5):
            pass

    def pull(self, subscription: str | None = None, count: int = 1000, wait: float = 10.0,
             ack: bool = True) -> list:
        """Up to `count` received messages; stops `wait` s after the last one arrived."""
        path = self.stack.subscription_path(subscription)
        received, deadline = [], time.monotonic() + wait
        while len(received) < count and time.monotonic() < deadline:
            response = self.subscriber.pull(subscription=path, max_messages=min(count, 1000),
                                            return_immediately=True, timeout=10)
            batch = list(response.received_messages)
            if not batch:
                time.sleep(0.05)
                continue
            if ack:
                self.subscriber.acknowledge(subscription=path,
                                            ack_ids=[m.ack_id for m in batch])
            received += batch
            deadline = time.monotonic() + wait
        return received

    def nack(self, messages, subscription: str | None = None) -> None:
        self.subscriber.modify_ack_deadline(
            subscription=self.stack.subscription_path(subscription),
            ack_ids=[m.ack_id for m in messages], ack_deadline_seconds=0)
