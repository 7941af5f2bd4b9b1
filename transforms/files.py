"""Reading payloads from JSONL files, and writing results to local or gs:// files."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows


class _ReadLines(beam.DoFn):
    def __init__(self, batch_size: int):
        self._batch_size = batch_size

    def process(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        batch = []
        with readable.open() as f:
            for number, line in enumerate(f, start=1):
                batch.append((f"{path}:{number}", (path, number), line.rstrip(b"\r\n")))
                if len(batch) == self._batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch


class ReadPayloadBatches(beam.PTransform):
    """File patterns (local or gs://, globs, .gz) -> lists of (position, order, line bytes).

    Lines keep their file and line number: dead letters point at them, and
    the smallest (path, line) copy of a duplicated identity is the one kept.
    Batches of lines, not single lines, travel between steps (throughput).
    A pattern that matches nothing is an error, not an empty input.
    """

    def __init__(self, patterns: list[str], batch_size: int = 2000):
        super().__init__()
        self._patterns = list(patterns)
        self._batch_size = batch_size

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> fileio.MatchAll(empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
                | "Open" >> fileio.ReadMatches()
                | "Lines" >> beam.ParDo(_ReadLines(self._batch_size)))


class _WriteSortedLines(beam.DoFn):
    def __init__(self, path: str):
        self._path = path

    def process(self, lines):
        with FileSystems.create(self._path) as f:
            for line in sorted(lines):
                f.write(line.encode("utf-8") + b"\n")
        yield self._path


class WriteSortedLines(beam.PTransform):
    """Text lines -> one sorted file at `path` (for results small enough to sort at once,
    like usage rows or a summary), so outputs are diffable run to run."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, lines):
        return (lines
                | "Unwindow" >> beam.WindowInto(GlobalWindows())
                | "Gather" >> beam.combiners.ToList()
                | "Write" >> beam.ParDo(_WriteSortedLines(self._path)))
