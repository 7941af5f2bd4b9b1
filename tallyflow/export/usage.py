"""What is exported: the `usage` view's rows for a closed period, exact."""
from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

from schemas import sql
from transforms.bigquery_target import BigQueryTarget, period_parameters, query


class UsageRow(NamedTuple):
    subject: str
    meter: str
    dimensions: str  # JSON object, sorted keys
    window_start: int  # ns
    window_end: int
    value: Decimal
    revision: int | None  # None: a streaming pane (no recompute covers the window)

    @property
    def window(self) -> tuple:
        return (self.subject, self.meter, self.dimensions, self.window_start)


def read_usage(target: BigQueryTarget, start_ns: int, end_ns: int) -> list[UsageRow]:
    """Rows of `usage` whose window starts in [start, end), in series order."""
    rows = query(target.client(), target.sql(sql.EXPORT_USAGE),
                 period_parameters(start_ns, end_ns))
    return [UsageRow(r["subject"], r["meter"], r["dimensions"], r["ws"] * 1000, r["we"] * 1000,
                     Decimal(r["value"] if r["value"] is not None else r["value_bignumeric"]),
                     r["revision"]) for r in rows]
