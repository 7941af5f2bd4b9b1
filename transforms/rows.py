"""Rows for the BigQuery tables of SPEC §4, each with a deterministic insert id.

Pure functions: (row_id, row) pairs, with exact values as decimal strings
(BigQuery parses NUMERIC from strings exactly) and times in RFC 3339 UTC at
microsecond precision (BigQuery's; `raw` keeps the event's own spelling).
"""
from __future__ import annotations

import base64
import json
from decimal import Decimal
from hashlib import blake2b

from schemas.metering import window_start
from schemas.values import NS, ValueProblem, check_range, format_time

NS_PER_US = 1000
# The text copy of a dead letter's payload is clipped beyond this many characters
# (`payload_bytes` then holds all of it), so a big payload is not stored twice whole.
PAYLOAD_TEXT_CHARS = 1 << 20
# Characters of a failed row's JSON per `failed_writes` row: re-escaped, a part is
# at most 2 MiB, well inside a request (transforms/bigquery.py MAX_REQUEST_BYTES).
FAILED_PART_CHARS = 1 << 20


class UnwritableRow(Exception):
    """A row no BigQuery column can hold as it is: it goes to `failed_writes`."""

    def __init__(self, code: str, reason: str, row_id: str, row: dict):
        super().__init__(reason)
        self.code, self.reason, self.row_id, self.row = code, reason, row_id, row


def row_id(*parts) -> str:
    return blake2b("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass"),
                   digest_size=16).hexdigest()


def timestamp(ns: int) -> str:
    return format_time(ns - ns % NS_PER_US)


def event_row(event, job_id: str) -> tuple[str, dict]:
    """The payload once, in `raw`; the columns beside it are what partitions, clusters,
    joins and filters read without parsing it (docs/architecture.md)."""
    return row_id("event", event.source, event.id, event.position), {
        "source": event.source,
        "id": event.id,
        "type": event.type,
        "subject": event.subject,
        "time": timestamp(event.time_ns),
        "raw": event.raw,
        "ingest_time": timestamp(event.ingest_ns),
        "message_id": event.position,
        "job_id": job_id,
    }


def dead_letter_row(rejection, pipeline: str, job_id: str) -> tuple[str, dict]:
    """The payload stored once: `payload` as text, and `payload_bytes` only when that text
    is not the payload verbatim and whole (bytes that are not UTF-8, shown as U+FFFD; a
    payload clipped to PAYLOAD_TEXT_CHARS), so COALESCE(payload_bytes, payload) is it."""
    text, whole = rejection.payload, rejection.payload_bytes is None
    if len(text) > PAYLOAD_TEXT_CHARS:
        text, whole = (text[:PAYLOAD_TEXT_CHARS] + f"... [clipped at {PAYLOAD_TEXT_CHARS} of "
                       f"{len(text)} characters; payload_bytes holds the whole payload]"), False
    return row_id("dead", rejection.position), {
        "payload": text,
        "payload_bytes": None if whole else base64.b64encode(
            payload_bytes(rejection)).decode("ascii"),
        "attributes": json.dumps(rejection.attributes or {}, sort_keys=True),
        "error_code": rejection.error_code,
        "error_message": rejection.error_message,
        "event_source": rejection.event_source,
        "event_id": rejection.event_id,
        "message_id": rejection.position,
        "pipeline": pipeline,
        "job_id": job_id,
        "failed_at": timestamp(rejection.ingest_ns),
    }


def payload_bytes(rejection) -> bytes:
    """The rejected payload's bytes as received (a batch element: its exact re-serialisation)."""
    if rejection.payload_bytes is not None:
        return rejection.payload_bytes
    return rejection.payload.encode("utf-8")


def late_event_row(event, lateness_ns: int, window_ns: int, job_id: str) -> tuple[str, dict]:
    start = window_start(event.time_ns, window_ns)
    return row_id("late", event.source, event.id, event.position), {
        "source": event.source,
        "id": event.id,
        "subject": event.subject,
        "type": event.type,
        "time": timestamp(event.time_ns),
        "window_start": timestamp(start),
        "window_end": timestamp(start + window_ns),
        "ingest_time": timestamp(event.ingest_ns),
        "lateness_seconds": _seconds(lateness_ns),
        "job_id": job_id,
    }


def duplicate_row(duplicate, seen_ns: int, job_id: str) -> tuple[str, dict]:
    return row_id("dup", duplicate.source, duplicate.id, duplicate.position), {
        "source": duplicate.source,
        "id": duplicate.id,
        "message_id": duplicate.position,
        "kept_message_id": duplicate.kept_position,
        "conflict": duplicate.conflict,
        "seen_at": timestamp(seen_ns),
        "job_id": job_id,
    }


def usage_pane_row(row: dict, bignumeric: bool, emitted_ns: int, job_id: str) -> tuple[str, dict]:
    """A formatted usage row (AggregateUsage with panes) -> a `usage_panes` row."""
    pane_id = row_id("pane", job_id, row["subject"], row["meter"], row["dimensions"],
                     row["window_start"], row["pane_index"])
    return checked_usage(pane_id, {
        "subject": row["subject"],
        "meter": row["meter"],
        "dimensions": row["dimensions"],
        "window_start": row["window_start"],
        "window_end": row["window_end"],
        **usage_value_columns(row["value"], bignumeric),
        "event_count": row["event_count"],
        "fingerprint": row["fingerprint"],
        "pane_timing": row["pane_timing"],
        "pane_index": row["pane_index"],
        "is_final": row["is_final"],
        "emitted_at": timestamp(emitted_ns),
        "job_id": job_id,
        "row_id": pane_id,
    })


def usage_value_columns(value: str, bignumeric: bool) -> dict:
    """A usage value in the column of its meter's precision (the other one NULL)."""
    return {"value": None if bignumeric else value,
            "value_bignumeric": value if bignumeric else None}


def checked_usage(usage_id: str, row: dict) -> tuple[str, dict]:
    """(usage_id, row), or UnwritableRow when the value does not fit its column: an
    aggregate of valid values can outgrow NUMERIC, and BigQuery would refuse the row."""
    bignumeric = row["value"] is None
    value = row["value_bignumeric"] if bignumeric else row["value"]
    precision = "BIGNUMERIC" if bignumeric else "NUMERIC"
    try:
        check_range(Decimal(value), precision)
    except ValueProblem as problem:
        advice = ("no BigQuery column holds it" if bignumeric else
                  "declare the meter `precision: BIGNUMERIC` in the catalog and recompute")
        raise UnwritableRow(
            "VALUE_OUT_OF_RANGE",
            f"meter {row['meter']!r}, window {row['window_start']} .. {row['window_end']}, "
            f"subject {row['subject']!r}, dimensions {row['dimensions']}: aggregate "
            f"{problem}: {advice}", usage_id, row) from None
    return usage_id, row


def failed_write_rows(table_name: str, failed_id: str, row: dict, code: str, reason: str,
                      failed_ns: int) -> list[tuple[str, dict]]:
    """A row that can never be written -> its `failed_writes` rows: the whole row as JSON
    (ASCII, so lone surrogates survive), in parts small enough to be written."""
    content = json.dumps(row, sort_keys=True, default=str)
    parts = [content[i:i + FAILED_PART_CHARS]
             for i in range(0, len(content), FAILED_PART_CHARS)] or [""]
    return [(row_id("failed", table_name, failed_id, n), {
        "table_name": table_name,
        "row_id": failed_id,
        "error_code": code,
        "reason": reason[:10_000],
        "content": part,
        "part": n,
        "parts": len(parts),
        "failed_at": timestamp(failed_ns),
    }) for n, part in enumerate(parts)]


def _seconds(ns: int) -> str:
    whole, frac = divmod(ns, NS)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".")


def usage_alert_row(alert: dict, job_id: str) -> tuple[str, dict]:
    """An alert (transforms/limits.py) -> a `usage_alerts` row; one insert id per alert
    and status, so a rewritten alert lands once."""
    alert_row_id = row_id("usage_alert", alert["alert_id"], alert["status"])
    return alert_row_id, {**alert, "job_id": job_id, "row_id": alert_row_id}
