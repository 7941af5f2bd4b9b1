"""The `exports` ledger in memory, for exporter tests that need no BigQuery; it can
crash on a chosen write, as a killed process would."""
from __future__ import annotations


class Crash(BaseException):
    """Not an Exception: nothing in the exporter may catch it, as with a kill."""


class MemoryLedger:
    def __init__(self):
        self.rows = []
        self.crash_on_write: int | None = None  # the n-th non-empty append (1-based) crashes
        self._writes = 0

    def load(self, provider, start_ns, end_ns):
        return [e for e in self.rows
                if e.provider == provider and start_ns <= e.window_start < end_ns]

    def append(self, entries):
        if not entries:
            return
        self._writes += 1
        if self._writes == self.crash_on_write:
            raise Crash(f"killed at ledger write {self._writes}")
        self.rows.extend(entries)
