"""Rows for the BigQuery tables of SPEC §4, each with a deterministic insert id.

Pure functions: (row_id, row) pairs, with exact values as decimal strings
(BigQuery parses NUMERIC from strings exactly) and times in RFC 3339 UTC at
microsecond precision (BigQuery's; `raw` keeps the event's own spelling).
"""
from __future__ import annotations

import base64
import json
from hashlib import blake2b

from schemas.values import dumps_exact, format_time, loads_exact

NS_PER_US = 1000


def row_id(*parts) -> str:
    return blake2b("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass"),
                   digest_size=16).hexdigest()


def timestamp(ns: int) -> str:
    return format_time(ns - ns % NS_PER_US)


def event_row(event, job_id: str) -> tuple[str, dict]:
    data = loads_exact(event.raw).get("data")
    return row_id("event", event.source, event.id, event.position), {
        "source": event.source,
        "id": event.id,
        "type": event.type,
        "subject": event.subject,
        "time": timestamp(event.time_ns),
        "data": None if data is None else dumps_exact(data),
        "raw": event.raw,
        "ingest_time": timestamp(event.ingest_ns),
        "message_id": event.position,
        "job_id": job_id,
    }


def dead_letter_row(rejection, pipeline: str, job_id: str) -> tuple[str, dict]:
    """`payload` as text (U+FFFD for bytes that are not UTF-8), `payload_bytes` exactly
    as received."""
    return row_id("dead", rejection.position), {
        "payload": rejection.payload,
        "payload_bytes": base64.b64encode(payload_bytes(rejection)).decode("ascii"),
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
    start = event.time_ns - event.time_ns % window_ns
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
    value = row["value"]
    pane_id = row_id("pane", job_id, row["subject"], row["meter"], row["dimensions"],
                     row["window_start"], row["pane_index"])
    return pane_id, {
        "subject": row["subject"],
        "meter": row["meter"],
        "dimensions": row["dimensions"],
        "window_start": row["window_start"],
        "window_end": row["window_end"],
        "value": None if bignumeric else value,
        "value_bignumeric": value if bignumeric else None,
        "event_count": row["event_count"],
        "fingerprint": row["fingerprint"],
        "pane_timing": row["pane_timing"],
        "pane_index": row["pane_index"],
        "is_final": row["is_final"],
        "emitted_at": timestamp(emitted_ns),
        "job_id": job_id,
        "row_id": pane_id,
    }


def _seconds(ns: int) -> str:
    whole, frac = divmod(ns, 10 ** 9)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".")
