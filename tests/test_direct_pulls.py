"""The DirectRunner's Pub/Sub pulls wait at most --pull_wait_seconds (transforms/pubsub.py):
its one worker thread runs every step, so an idle pull held up early panes and alerts."""
from google.api_core.exceptions import DeadlineExceeded, RetryError
from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator

from transforms.pubsub import BoundedPulls, bound_direct_pulls


class FakeSubscriber:
    def __init__(self, fail=None):
        self.pulls, self.acked, self.fail = [], [], fail

    def pull(self, **request):
        self.pulls.append(request)
        if self.fail:
            raise self.fail
        return "messages"

    def acknowledge(self, **request):
        self.acked.append(request)

    def close(self):
        pass


def test_a_pull_waits_at_most_the_bound_and_keeps_the_rest_of_its_request():
    fake = FakeSubscriber()
    bounded = BoundedPulls(fake, 2)
    assert bounded.pull(subscription="s", max_messages=10, timeout=30) == "messages"
    assert bounded.pull(subscription="s", max_messages=10) == "messages"
    assert bounded.pull(subscription="s", max_messages=10, timeout=1) == "messages"
    assert fake.pulls == [{"subscription": "s", "max_messages": 10, "timeout": t}
                          for t in (2, 2, 1)]
    bounded.acknowledge(subscription="s", ack_ids=["a"])  # the rest is the client's own
    assert fake.acked == [{"subscription": "s", "ack_ids": ["a"]}]


def test_a_pull_past_its_deadline_is_an_empty_answer():
    for failure in (DeadlineExceeded("late"), RetryError("gave up", None)):
        response = BoundedPulls(FakeSubscriber(fail=failure), 2).pull(subscription="s")
        assert list(response.received_messages) == []


def test_the_direct_runner_s_read_gets_bounded_pulls(monkeypatch):
    class Transform:  # stands for the applied read transform (a weak key)
        pass

    fake = FakeSubscriber()
    monkeypatch.setattr("google.cloud.pubsub.SubscriberClient", lambda: fake)
    for name in ("_get_subscriber_client_state_unlocked", "_unbounded_client_state",
                 "pull_wait_seconds"):  # put back as they were after the test
        monkeypatch.setattr(_PubSubReadEvaluator, name,
                            _PubSubReadEvaluator.__dict__.get(name), raising=False)
    bound_direct_pulls(3)
    bound_direct_pulls(3)  # twice: still one wrapper
    transform = Transform()
    try:
        client = _PubSubReadEvaluator._get_subscriber_client(transform)
        assert isinstance(client, BoundedPulls) and client.client is fake
        assert _PubSubReadEvaluator._get_subscriber_client(transform) is client
        client.pull(subscription="s", max_messages=10, timeout=30)  # as Beam 2.77 asks
        assert fake.pulls[-1]["timeout"] == 3
    finally:
        _PubSubReadEvaluator._subscriber_client_cache.pop(transform, None)
