"""The `exports` ledger: what was sent to a provider, one row per request state.

Append-only. Before a request is made its row is written `pending` (with the
exact request body); after the call a second row records `sent` or `failed`
(or `skipped`: never sent, because an earlier request of its series failed).
So after a crash, a key whose latest row is `pending` may or may not have
reached the provider: the next run resends that body verbatim under the same
key, and the provider's idempotency makes it count once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Iterable

from schemas import sql
from schemas.tables import EXPORTS
from schemas.values import format_time
from transforms.bigquery_target import BigQueryTarget, period_parameters, query

PENDING, SENT, FAILED, SKIPPED = "pending", "sent", "failed", "skipped"
_ORDER = {PENDING: 0, SENT: 1, FAILED: 1, SKIPPED: 1}
RESPONSE_CHARS = 2000


@dataclass(frozen=True)
class Entry:
    """One row of `exports` (times in ns since the epoch; values exact)."""

    provider: str
    object_type: str
    idempotency_key: str
    subject: str
    customer: str
    meter: str
    provider_meter: str
    dimensions: str
    window_start: int
    window_end: int
    period_start: int
    period_end: int
    quantity: Decimal
    request: str
    requested_at: int
    status: str
    run_id: str
    recorded_at: int
    revision: int | None = None
    exact_value: Decimal | None = None
    remainder: Decimal | None = None
    provider_object: str | None = None
    supersedes: str | None = None
    response: str | None = None
    attempts: int | None = None

    @property
    def window(self) -> tuple:
        """The usage row this entry is about."""
        return (self.subject, self.meter, self.dimensions, self.window_start)

    def body(self) -> dict:
        return json.loads(self.request)

    def recorded(self, status: str, run_id: str, now: int, response=None,
                 attempts: int | None = None, provider_object: str | None = None) -> "Entry":
        """This request's next state."""
        text = response if isinstance(response, str) or response is None else json.dumps(
            response, default=str, sort_keys=True)
        return dataclasses.replace(
            self, status=status, run_id=run_id, recorded_at=now,
            response=text[:RESPONSE_CHARS] if text else None, attempts=attempts,
            provider_object=provider_object or self.provider_object)

    def row(self) -> dict:
        row = {}
        for column in EXPORTS.column_names():
            value = getattr(self, column)
            if column in _TIMES:
                value = format_time(value - value % 1000)
            elif isinstance(value, Decimal):
                value = str(value)
            row[column] = value
        return row

    def row_id(self) -> str:
        return hashlib.sha256(
            f"{self.idempotency_key}|{self.status}|{self.run_id}|{self.recorded_at}".encode()
        ).hexdigest()[:32]


def latest(entries: Iterable[Entry]) -> dict[str, Entry]:
    """The current state of every key: its last recorded row (an outcome wins over a
    `pending` recorded at the same instant)."""
    state: dict[str, Entry] = {}
    for entry in sorted(entries, key=lambda e: (e.recorded_at, _ORDER[e.status])):
        state[entry.idempotency_key] = entry
    return state


class BigQueryLedger:
    """The ledger in BigQuery (`exports`), read by window range, appended with insert ids."""

    def __init__(self, target: BigQueryTarget):
        self._target = target
        self._client = target.client()

    def load(self, provider: str, start_ns: int, end_ns: int) -> list[Entry]:
        """Every row about windows starting in [start, end): a window's state does not
        depend on which period it was exported under."""
        columns = (f"* EXCEPT({', '.join(_TIMES)}), "
                   + ", ".join(f"UNIX_MICROS({c}) AS {c}" for c in _TIMES))
        rows = query(self._client, self._target.sql(sql.EXPORT_LEDGER, columns=columns),
                     [("provider", "STRING", provider)] + period_parameters(start_ns, end_ns))
        return [Entry(**{k: (v * 1000 if k in _TIMES else v) for k, v in row.items()})
                for row in rows]

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        for start in range(0, len(entries), 500):
            part = entries[start:start + 500]
            errors = self._client.insert_rows_json(
                self._target.table_id(EXPORTS), [e.row() for e in part],
                row_ids=[e.row_id() for e in part], timeout=30)
            if errors:
                raise RuntimeError(f"the exports ledger rejected rows: {errors[:3]}")


_TIMES = ("window_start", "window_end", "period_start", "period_end", "requested_at",
          "recorded_at")
