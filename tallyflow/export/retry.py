"""One retry policy for every provider call (the SDKs' own retries are turned off).

429 and 5xx (and connection failures) are retried with exponential backoff and
full jitter, waiting at least what the provider's `Retry-After` asks; another
4xx is the request's own fault: it is returned as a rejection for the ledger
(a per-row failure) and never retried. A call still failing transiently after
the budget raises `ProviderUnavailable`: the run stops (exit 3), its pending
ledger rows are resent with the same keys by the next run.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from pipelines.policy import CommandFailed


class Failure(NamedTuple):
    """A provider error as the policy sees it."""

    transient: bool
    status: int | None  # HTTP status, None for a connection failure
    message: str
    retry_after: float | None = None  # seconds, from the Retry-After header


class ProviderUnavailable(CommandFailed):
    """Transient failures outlasted the retry budget."""


class Outcome(NamedTuple):
    response: object | None  # the SDK's result when the call succeeded
    rejection: Failure | None  # a 4xx: the row failed
    attempts: int


def retry_after_seconds(headers) -> float | None:
    """A `Retry-After` header in seconds (HTTP dates are not used by these providers)."""
    if not headers:
        return None
    value = next((v for k, v in dict(headers).items() if k.lower() == "retry-after"), None)
    try:
        return max(0.0, float(value)) if value is not None else None  # float-ok: seconds
    except ValueError:
        return None


@dataclass
class RetryPolicy:
    max_attempts: int = 8
    first_backoff: float = 0.5
    max_backoff: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, failure: Failure) -> float:
        """Full jitter over the exponential bound, and never less than Retry-After."""
        bound = min(self.max_backoff, self.first_backoff * 2 ** (attempt - 1))
        jittered = self.rng.uniform(0, bound)
        return max(jittered, failure.retry_after or 0.0)

    def call(self, provider: str, request: Callable[[], object],
             classify: Callable[[BaseException], Failure | None]) -> Outcome:
        """Runs `request` until it succeeds, is rejected, or the budget is spent.
        `classify` returns None for an exception that is not a provider error."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return Outcome(request(), None, attempt)
            except Exception as error:  # noqa: BLE001 - classified below
                failure = classify(error)
                if failure is None:
                    raise
                if not failure.transient:
                    return Outcome(None, failure, attempt)
                if attempt >= self.max_attempts:
                    raise ProviderUnavailable(
                        f"{provider} kept failing after {attempt} attempts: "
                        f"{failure.status or 'connection'} {failure.message[:300]}") from error
                self.sleep(self.delay(attempt, failure))
