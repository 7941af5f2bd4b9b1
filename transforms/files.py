"""Reading payloads from JSONL files, and writing results to local or gs:// files."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows


# A file is read as ranges of about this many bytes, each starting at a line.
RANGE_BYTES = 16 << 20


def plan_ranges(f, target: int = RANGE_BYTES, block: int = 8 << 20) -> list[tuple]:
    """(start offset, end offset or None for the end of the file, first line number) of
    line-aligned ranges of about `target` bytes, from one sequential pass over `f`
    that counts newlines (in C: about a second per GB), so each range knows the
    line number it starts at."""
    ranges, start, first = [], 0, 1
    offset, newlines, boundary = 0, 0, target
    for chunk in iter(lambda: f.read(block), b""):
        end, pos = offset + len(chunk), 0
        while boundary < end:
            cut = chunk.find(b"\n", max(boundary - offset, pos))
            if cut < 0:
                break
            newlines += chunk.count(b"\n", pos, cut + 1)
            pos = cut + 1
            ranges.append((start, offset + pos, first))
            start, first = offset + pos, newlines + 1
            boundary = start + target
        newlines += chunk.count(b"\n", pos)
        offset = end
    ranges.append((start, None, first))
    return ranges


def split_lines(data: bytes) -> list[bytes]:
    """Lines of a range as iterating the file would give them, without line endings."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the range ends with a newline, not with a last unterminated line
    return [line.rstrip(b"\r") for line in lines]


class _PlanRanges(beam.DoFn):
    def __init__(self, range_bytes: int):
        self._range_bytes = range_bytes

    def process(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        if CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED:
            yield path, 0, None, 1  # a compressed file cannot be entered midway
            return
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for start, end, first in plan_ranges(f, self._range_bytes):
                yield path, start, end, first


class _ReadRange(beam.DoFn):
    def __init__(self, batch_size: int):
        self._batch_size = batch_size

    def process(self, file_range):
        path, start, end, first = file_range
        compression = (CompressionTypes.AUTO if start == 0 and end is None
                       else CompressionTypes.UNCOMPRESSED)
        with FileSystems.open(path, compression_type=compression) as f:
            f.seek(start)
            lines = split_lines(f.read() if end is None else f.read(end - start))
        for at in range(0, len(lines), self._batch_size):
            yield path, first + at, lines[at:at + self._batch_size]


def _payloads(chunk):
    """(path, first line number, lines) -> [(position, order, payload)]."""
    path, first, lines = chunk
    return [(f"{path}:{number}", (path, number), line)
            for number, line in enumerate(lines, start=first)]


class ReadPayloadBatches(beam.PTransform):
    """File patterns (local or gs://, globs, .gz) -> lists of (position, order, line bytes).

    Lines keep their file and line number: dead letters point at them, and
    the smallest (path, line) copy of a duplicated identity is the one kept.
    Batches of lines, not single lines, travel between steps (throughput).
    A file is planned into line-aligned byte ranges that know their first line
    number, and only the (small) ranges are reshuffled, so every worker reads
    and parses ranges of one big file itself: no line crosses a shuffle.
    A pattern that matches nothing is an error, not an empty input.
    """

    def __init__(self, patterns: list[str], batch_size: int = 2000,
                 range_bytes: int = RANGE_BYTES):
        super().__init__()
        self._patterns = list(patterns)
        self._batch_size = batch_size
        self._range_bytes = range_bytes

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> fileio.MatchAll(empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
                | "Open" >> fileio.ReadMatches()
                | "PlanRanges" >> beam.ParDo(_PlanRanges(self._range_bytes))
                | "Spread" >> beam.Reshuffle()
                | "ReadRanges" >> beam.ParDo(_ReadRange(self._batch_size))
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
