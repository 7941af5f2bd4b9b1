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
        first, lines = 1, []
        with readable.open() as f:
            for line in f:
                lines.append(line.rstrip(b"\r\n"))
                if len(lines) == self._batch_size:
                    yield path, first, lines
                    first, lines = first + len(lines), []
        if lines:
            yield path, first, lines


def _payloads(chunk):
    """(path, first line number, lines) -> [(position, order, payload)]."""
    path, first, lines = chunk
    return [(f"{path}:{number}", (path, number), line)
            for number, line in enumerate(lines, start=first)]


class ReadPayloadBatches(beam.PTransform):
    """File patterns (local or gs://, globs, .gz) -> lists of (position, order, line bytes).

    Lines keep their file and line number: dead letters point at them, and
    the smallest (path, line) copy of a duplicated identity is the one kept.
    Batches of lines, not single lines, travel between steps (throughput), and
    are reshuffled as plain bytes before they become payload tuples, so one big
    file is parsed by every worker, not only by the one that read it.
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
                | "Lines" >> beam.ParDo(_ReadLines(self._batch_size))
                | "Spread" >> beam.Reshuffle()
                | "Payloads" >> beam.Map(_payloads))


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
