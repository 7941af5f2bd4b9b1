"""What is exported: the `usage` view's rows for a closed period, exact."""
from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

from schemas.tables import USAGE_VIEW
from schemas.values import format_time
from transforms.bigquery import BigQueryTarget, query_config


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
    sql = (f"SELECT subject, meter, dimensions, UNIX_MICROS(window_start) AS ws, "
           f"UNIX_MICROS(window_end) AS we, value, value_bignumeric, revision "
           f"FROM `{target.table_id(USAGE_VIEW.name)}` "
           f"WHERE window_start >= @start AND window_start < @end "
           f"ORDER BY subject, meter, window_start, dimensions")
    rows = target.client().query(sql, job_config=query_config([
        ("start", "TIMESTAMP", format_time(start_ns)),
        ("end", "TIMESTAMP", format_time(end_ns))])).result()
    return [UsageRow(r["subject"], r["meter"], r["dimensions"], r["ws"] * 1000, r["we"] * 1000,
                     Decimal(r["value"] if r["value"] is not None else r["value_bignumeric"]),
                     r["revision"]) for r in rows]
