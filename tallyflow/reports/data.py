"""What the reports (`explain`, `statement`) read, and how: the customer's tables,
queried with parameters only, and the arguments and checks they share.

A report's own problem (an unknown customer or meter, bad arguments) is a
`ReportError`: a bad argument to the error policy (exit 2, one line). A
failing BigQuery call is left to the policy too, which names the call (exit 3),
and so is a bug (its type and where it happened), so neither looks like the other.
"""
from __future__ import annotations

import argparse
import datetime as dt
from decimal import Decimal

from pipelines.options import add_table_arguments, table_target
from schemas.catalog import CatalogError, Meter, MeterCatalog, load_catalog
from schemas.sql import CUSTOMER_EXISTS
from transforms.bigquery_target import BigQueryTarget, query, timestamp

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class ReportError(ValueError):
    """A one-line, user-facing reason (unknown customer or meter, bad arguments)."""


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """--meters and where the tables live."""
    parser.add_argument("--meters", required=True,
                        help="Meter catalog YAML file (the one the pipelines use).")
    add_table_arguments(parser)


class Instant:
    """A TIMESTAMP query parameter (nanoseconds since the epoch, microsecond-truncated)."""

    def __init__(self, ns: int):
        self.ns = ns - ns % 1000


def _parameter(name: str, value) -> tuple:
    if isinstance(value, Instant):
        return timestamp(name, value.ns)
    return name, "INT64" if isinstance(value, int) else "STRING", value


class Dataset:
    """The tallyflow tables of one dataset, as the reports read them."""

    def __init__(self, project: str, dataset: str, endpoint: str | None = None, client=None):
        self.target = BigQueryTarget(project, dataset, endpoint)
        self.client = client or self.target.client()

    @classmethod
    def from_args(cls, args) -> "Dataset":
        target = table_target(args)
        return cls(target.project, target.dataset, target.endpoint)

    def query(self, statement: str, params=(), **named) -> list[dict]:
        """Rows of a `schemas.sql` statement; `params` as (name, type, value), `named`
        typed by their values (Instant: TIMESTAMP, int: INT64, else STRING)."""
        return query(self.client, self.target.sql(statement),
                     list(params) + [_parameter(k, v) for k, v in named.items()])

    def require_subject(self, subject: str) -> None:
        """ReportError unless the customer has usage or events (no other customer is read)."""
        if not self.query(CUSTOMER_EXISTS, subject=subject):
            raise ReportError(f"unknown customer {subject!r}: no usage and no events in "
                              f"{self.target.project}.{self.target.dataset}")


def ns_of(value: dt.datetime) -> int:
    """A BigQuery TIMESTAMP (datetime, microseconds) -> nanoseconds since the epoch."""
    return (value - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def meter_of(catalog: MeterCatalog, key: str) -> Meter:
    try:
        return catalog.meter(key)
    except KeyError:
        known = ", ".join(m.key for m in catalog.meters)
        raise ReportError(f"unknown meter {key!r} (the catalog has: {known})") from None


def load_meters(path: str) -> MeterCatalog:
    try:
        return load_catalog(path)
    except (CatalogError, OSError) as e:
        raise ReportError(str(e).splitlines()[0]) from None


def row_value(row: dict) -> Decimal:
    """The exact value of a usage row (NUMERIC or BIGNUMERIC column)."""
    value = row["value"] if row.get("value") is not None else row.get("value_bignumeric")
    return Decimal(0) if value is None else Decimal(value)
