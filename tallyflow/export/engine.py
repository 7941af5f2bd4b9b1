"""The export run, the same for every provider.

1. Load the ledger for the period's windows and fold it to each key's state.
2. Resend every request still `pending` (a crashed run's), verbatim, under its key:
   the provider counts it once whether or not the first attempt reached it.
3. Ask the provider what the current usage needs that the ledger does not hold
   (new windows, restated windows, quantities moved by a carried remainder).
4. Write those requests `pending`, send them, write their outcomes.

Requests of one series (customer x provider meter) go one at a time and in
order (Stripe allows one concurrent call per customer and meter, and a
correction's cancel must land before its resend); series go in parallel up to
`concurrency`, under a global calls-per-second limit. A request the provider
rejects (4xx) fails alone, in the ledger, and the rest of its series is
`skipped` (replanned by the next run); other series go on.

Requests a provider takes in batches (`Provider.batchable`: Stripe's v2 meter
event stream, up to 100 events a call) go after every other request of the
chunk, so a series' cancels still land before its events, and only for series
whose other requests all went through; batches mix series and go in parallel.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Protocol

from tallyflow.export.ledger import FAILED, PENDING, SENT, SKIPPED, Entry, latest
from tallyflow.export.mapping import Mapping
from tallyflow.export.retry import Failure, RetryPolicy
from tallyflow.export.usage import UsageRow

CHUNK = 500  # requests written pending, sent and recorded together


@dataclass(frozen=True)
class Context:
    run_id: str
    now: int  # ns; what "now" is for the provider's time limits
    period_start: int
    period_end: int
    mapping: Mapping


class Sent(NamedTuple):
    response: object
    provider_object: str | None = None
    followups: tuple = ()  # further ledger rows the request produced (Orb backfill events)


class Provider(Protocol):
    name: str

    def plan(self, rows: list[UsageRow], state: dict[str, Entry],
             context: Context) -> list[Entry]: ...

    def send(self, entry: Entry) -> Sent: ...

    def classify(self, error: BaseException) -> Failure | None: ...

    def batchable(self, entry: Entry) -> bool: ...

    def send_batch(self, entries: list[Entry]) -> list[Sent | Failure]: ...


class SdkProvider:
    """A provider over its official SDK's client; subclasses name their `classify`.
    Every request is its own call unless a subclass batches some (`batch_size`)."""

    name: str
    batch_size = 1

    def __init__(self, sdk_client):
        self._client = sdk_client

    def batchable(self, entry: Entry) -> bool:
        return False


class Report(NamedTuple):
    resumed: int  # pending requests of an earlier run, resent
    counts: dict  # status -> requests of this run (resumed included)

    @property
    def clean(self) -> bool:
        return not (self.counts.get(FAILED) or self.counts.get(SKIPPED))


class CallRate:
    """At most `per_second` calls started per second, across threads."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            self._sleep(start - now)


def series_key(entry: Entry) -> tuple:
    return (entry.customer, entry.provider_meter)


def export(provider: Provider, rows: list[UsageRow], ledger, context: Context,
           policy: RetryPolicy, concurrency: int = 8, calls_per_second: float = 100,
           progress: Callable[[str], None] = lambda _: None) -> Report:
    state = latest(ledger.load(provider.name, context.period_start, context.period_end))
    rate = CallRate(calls_per_second)
    counts: Counter = Counter()
    resumed = [e for e in state.values() if e.status == PENDING]
    if resumed:
        progress(f"resending {len(resumed)} requests a previous run left pending")
        for outcome in _run(provider, resumed, ledger, context, policy, concurrency, rate):
            state[outcome.idempotency_key] = outcome
            counts[outcome.status] += 1
    planned = provider.plan(rows, state, context)
    progress(f"{len(planned)} requests to make for {len(rows)} usage rows")
    decided = [e for e in planned if e.status != PENDING]  # failed before any call
    ledger.append(decided)
    counts.update(e.status for e in decided)
    to_send = [e for e in planned if e.status == PENDING]
    for start in range(0, len(to_send), CHUNK):
        chunk = to_send[start:start + CHUNK]
        ledger.append(chunk)
        for outcome in _run(provider, chunk, ledger, context, policy, concurrency, rate):
            counts[outcome.status] += 1
        progress(f"sent {min(start + CHUNK, len(to_send))}/{len(to_send)}")
    return Report(len(resumed), dict(counts))


def _run(provider: Provider, entries: list[Entry], ledger, context: Context,
         policy: RetryPolicy, concurrency: int, rate: CallRate) -> list[Entry]:
    """Sends pending entries (series in order, then batches), records and returns their
    outcomes (with their follow-up rows). If a series or a batch raises (transient
    failures past the budget), what finished is recorded first."""
    by_series: dict[tuple, list[Entry]] = {}
    batched: list[Entry] = []
    for entry in entries:
        if provider.batchable(entry):
            batched.append(entry)
        else:
            by_series.setdefault(series_key(entry), []).append(entry)
    outcomes: list[Entry] = []
    failed_series: set[tuple] = set()
    lock = threading.Lock()

    def recorded(entry: Entry, outcome, sent) -> list[Entry]:
        """The ledger rows of one request's outcome: Sent, or a Failure (a rejection)."""
        if isinstance(sent, Failure):
            return [entry.recorded(FAILED, context.run_id, time.time_ns(),
                                   f"{sent.status}: {sent.message}", outcome.attempts)]
        return [entry.recorded(SENT, context.run_id, time.time_ns(), sent.response,
                               outcome.attempts, sent.provider_object), *sent.followups]

    def send_series(series: list[Entry]) -> None:
        failed = False
        for entry in series:
            if failed:
                result = [skipped(entry)]
            else:
                rate.wait()
                outcome = policy.call(provider.name, lambda e=entry: provider.send(e),
                                      provider.classify)
                result = recorded(entry, outcome, outcome.rejection or outcome.response)
                failed = result[0].status == FAILED
            with lock:
                outcomes.extend(result)
                if failed:
                    failed_series.add(series_key(entry))

    def send_batch(batch: list[Entry]) -> None:
        rate.wait()
        outcome = policy.call(provider.name, lambda: provider.send_batch(batch),
                              provider.classify)
        sents = [outcome.rejection] * len(batch) if outcome.rejection else outcome.response
        result = [row for entry, sent in zip(batch, sents)
                  for row in recorded(entry, outcome, sent)]
        with lock:
            outcomes.extend(result)

    def skipped(entry: Entry) -> Entry:
        return entry.recorded(SKIPPED, context.run_id, time.time_ns(),
                              "not sent: an earlier request of its series failed")

    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for future in [pool.submit(send_series, s) for s in by_series.values()]:
                future.result()
            ready = [e for e in batched if series_key(e) not in failed_series]
            outcomes.extend(skipped(e) for e in batched if series_key(e) in failed_series)
            size = max(1, provider.batch_size)
            for future in [pool.submit(send_batch, ready[i:i + size])
                           for i in range(0, len(ready), size)]:
                future.result()
    finally:
        ledger.append(outcomes)
    return outcomes


def _kinds(object_type: str | tuple) -> tuple:
    return (object_type,) if isinstance(object_type, str) else object_type


def holdings(state: dict[str, Entry], object_type: str | tuple,
             superseding: Iterable[str] = ()) -> dict[tuple, list[Entry]]:
    """Per usage window, the sent entries of `object_type` (or of any of a tuple of
    types) the provider still counts: not superseded by a sent entry of a
    `superseding` type (a cancel, a backfill)."""
    gone = {e.supersedes for e in state.values()
            if e.status == SENT and e.object_type in superseding and e.supersedes}
    held: dict[tuple, list[Entry]] = {}
    for entry in state.values():
        if (entry.object_type in _kinds(object_type) and entry.status == SENT
                and entry.idempotency_key not in gone):
            held.setdefault(entry.window, []).append(entry)
    return held


def generations(state: dict[str, Entry], object_type: str | tuple) -> dict[tuple, int]:
    """Per window, how many requests of `object_type` reached (or may have reached) the
    provider: the next one's generation, so a correction never reuses a key, while a
    request never made (failed without a call, skipped) keeps its own."""
    made: dict[tuple, int] = {}
    for entry in state.values():
        if entry.object_type in _kinds(object_type) and (entry.status in (SENT, PENDING)
                                                 or entry.attempts):
            made[entry.window] = made.get(entry.window, 0) + 1
    return made


def request_entry(provider: str, object_type: str, key: str, about, context: Context,
                  quantity, request: dict, status: str = PENDING, response: str | None = None,
                  **columns) -> Entry:
    """A new ledger row for a request about `about` (a UsageRow or the Entry of a window
    that no longer has usage); pending unless decided without a call."""
    import json

    return Entry(provider=provider, object_type=object_type, idempotency_key=key,
                 subject=about.subject, customer=context.mapping.customer(about.subject),
                 meter=about.meter, provider_meter=context.mapping.meter(about.meter),
                 dimensions=about.dimensions, window_start=about.window_start,
                 window_end=about.window_end, period_start=context.period_start,
                 period_end=context.period_end, quantity=quantity,
                 request=json.dumps(request, sort_keys=True), requested_at=context.now,
                 status=status, run_id=context.run_id, recorded_at=context.now,
                 response=response, revision=about.revision, **columns)
