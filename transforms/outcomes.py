"""Where every input ends up: file rows for usage and dead letters, and the summary.

The summary is computed from the data itself (not from runner metrics), so
its conservation check means the same on every runner.
"""
from __future__ import annotations

import base64
import json
from collections import Counter
from functools import lru_cache

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from schemas.values import one_line


def usage_line(row: dict) -> str:
    """A usage row as a JSONL line: dimensions as a JSON object with sorted keys.

    Byte for byte `json.dumps({**row, "dimensions": json.loads(row["dimensions"])},
    sort_keys=True, ensure_ascii=False)` made `one_line`, written out for speed (a
    recompute writes about a row per event at high cardinality): the columns in sorted
    order, each string by the encoder's own function, the few distinct dimensions memoised.
    """
    text = _string
    return one_line(f'{{"dimensions": {_dimensions_json(row["dimensions"])}, '
                    f'"event_count": {int.__repr__(row["event_count"])}, '
                    f'"fingerprint": {text(row["fingerprint"])}, "meter": {text(row["meter"])}, '
                    f'"subject": {text(row["subject"])}, "value": {text(row["value"])}, '
                    f'"window_end": {text(row["window_end"])}, '
                    f'"window_start": {text(row["window_start"])}}}')


_string = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


@lru_cache(maxsize=4096)
def _dimensions_json(dimensions: str) -> str:
    return json.dumps(json.loads(dimensions), sort_keys=True, ensure_ascii=False)


def dead_letter_line(rejection) -> str:
    """A rejection as a JSONL line; a payload that is not UTF-8 also as `payload_base64`."""
    line = {
        "error_code": rejection.error_code,
        "error_message": rejection.error_message,
        "payload": rejection.payload,
        "position": rejection.position,
        "event_source": rejection.event_source,
        "event_id": rejection.event_id,
    }
    if rejection.payload_bytes is not None:
        line["payload_base64"] = base64.b64encode(rejection.payload_bytes).decode("ascii")
    return one_line(json.dumps(line, sort_keys=True, ensure_ascii=False))


class _Summarize(beam.DoFn):
    def __init__(self, context: dict):
        self._context = context

    def process(self, counts):
        by_code = {key.split("/", 1)[1]: n for key, n in sorted(counts.items())
                   if key.startswith("dead_lettered_by_code/")}
        records = counts.get("records", 0)
        accounted = (counts.get("accepted", 0) + counts.get("duplicates", 0)
                     + counts.get("dead_lettered", 0))
        summary = {
            **self._context,
            "lines_read": counts.get("lines", 0),
            "records_read": records,
            "events_accepted": counts.get("accepted", 0),
            "duplicates": counts.get("duplicates", 0),
            "conflicting_duplicates": counts.get("conflicting_duplicates", 0),
            "dead_lettered": counts.get("dead_lettered", 0),
            "dead_lettered_by_code": by_code,
            "unmetered": counts.get("unmetered", 0),
            "outside_period": counts.get("outside_period", 0),
            "usage_rows": counts.get("usage_rows", 0),
            "conservation": {
                "records_read": records,
                "accepted_plus_duplicates_plus_dead_lettered": accounted,
                "holds": records == accounted,
            },
        }
        yield summary


class _WriteJson(beam.DoFn):
    def __init__(self, path: str):
        self._path = path

    def process(self, document):
        with FileSystems.create(self._path) as f:
            f.write(json.dumps(document, indent=2).encode("utf-8") + b"\n")
        yield self._path


class WriteJson(beam.PTransform):
    """A single dict -> a pretty JSON file at `path` (local or gs://)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, documents):
        return documents | "Write" >> beam.ParDo(_WriteJson(self._path))


class _SumCounts(beam.CombineFn):
    def create_accumulator(self):
        return Counter()

    def add_input(self, acc, counts):
        acc.update(counts)
        return acc

    def merge_accumulators(self, accs):
        merged = Counter()
        for acc in accs:
            merged.update(acc)
        return merged

    def extract_output(self, acc):
        return acc


class SummarizeCounts(beam.PTransform):
    """Counters (from ComputeUsage) -> one summary dict with the conservation check:
    records read (a line, or each event of a batch line) = accepted + duplicates +
    dead-lettered."""

    def __init__(self, context: dict):
        super().__init__()
        self._context = context

    def expand(self, counts):
        return (counts
                | "Unwindow" >> beam.WindowInto(GlobalWindows())
                | "Sum" >> beam.CombineGlobally(_SumCounts())
                | "Summarize" >> beam.ParDo(_Summarize(self._context)))
