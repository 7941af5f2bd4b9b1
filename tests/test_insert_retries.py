"""`_InsertBatch` under transient BigQuery failures: retried with the same insert ids (so
BigQuery drops a repeat), and given up, by failing the bundle, once the target's retry
budget is spent."""
import time as real_time

import pytest

from schemas.tables import USAGE_PANES
from transforms import bigquery
from transforms.bigquery import _InsertBatch
from transforms.bigquery_target import BigQueryTarget


class FlakyClient:
    """insert_rows_json fails with a connection error `failures` times, then inserts."""

    def __init__(self, failures: int):
        self.failures = failures
        self.attempts: list[list[tuple]] = []
        self.table: dict[str, dict] = {}

    def insert_rows_json(self, table_id, rows, row_ids, **_):
        self.attempts.append(list(zip(row_ids, rows)))
        if len(self.attempts) <= self.failures:
            raise ConnectionError("connection reset by peer")
        for row_id, row in zip(row_ids, rows):
            self.table.setdefault(row_id, row)  # BigQuery drops a repeated insert id
        return []


class Target(BigQueryTarget):
    def client(self):
        return self.fake


class Clock:
    """Stands in for the `time` module: sleeping moves the monotonic clock, instantly."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    def __getattr__(self, name):
        return getattr(real_time, name)


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(bigquery, "time", fake)
    return fake


def insert(client, retry_seconds, batch):
    target = Target("fake-project", "fake_dataset", retry_seconds=retry_seconds)
    object.__setattr__(target, "fake", client)
    fn = _InsertBatch(target, USAGE_PANES)
    fn.setup()
    return list(fn.process(batch))


BATCH = [(f"pane-{n}", {"subject": "acme", "value": str(n)}) for n in range(3)]


def test_transient_failures_are_retried_with_the_same_insert_ids(clock):
    client = FlakyClient(failures=3)
    insert(client, 120, BATCH)
    assert len(client.attempts) == 4
    for attempt in client.attempts:  # every retry carries each row with its own id
        assert dict(attempt) == dict(BATCH)
    assert client.table == dict(BATCH)  # each row landed once
    assert 0 < clock.now < 120


def test_it_gives_up_after_the_retry_budget(clock):
    client = FlakyClient(failures=10 ** 6)
    with pytest.raises(RuntimeError, match="usage_panes"):  # the bundle fails, loudly
        insert(client, 30, BATCH)
    assert 0 < clock.now and len(client.attempts) > 1  # after backing off and retrying
    assert all(dict(attempt) == dict(BATCH) for attempt in client.attempts)
    assert client.table == {}
