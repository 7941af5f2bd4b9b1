"""Reading payloads from JSONL files, and writing results to local or gs:// files."""
from __future__ import annotations

import bz2
import contextlib
import heapq
import itertools
import lzma
import os
import uuid
import zlib

import apache_beam as beam
import zstandard
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from schemas.events import Payload


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


class UnreadableInput(OSError):
    """An input file that cannot be read whole: the run fails, naming the file and why.
    (One message argument: Beam re-raises a step's error as its type with the step
    name appended, and only a one-argument exception survives that.)"""


def _unreadable(path: str, reason: str) -> UnreadableInput:
    return UnreadableInput(f"cannot read {path}: {reason}")


@contextlib.contextmanager
def _reading(path: str):
    """Any failure to read `path`, however the library spells it, as UnreadableInput."""
    try:
        yield
    except UnreadableInput:
        raise
    except (zlib.error, lzma.LZMAError, zstandard.ZstdError) as e:
        raise _unreadable(path, f"corrupt compressed data ({_first_line(e)})") from e
    except (OSError, EOFError) as e:
        raise _unreadable(path, f"{type(e).__name__}: {_first_line(e)}") from e


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def canonical_path(path: str) -> str:
    """One spelling per file, so neither the order of copies (which copy of a duplicate
    wins) nor whether a file is read once depends on how a pattern named it: local
    paths absolute with symlinks resolved; URIs (gs://...) as the filesystem gives them."""
    return path if FileSystems.get_scheme(path) else os.path.realpath(path)


def matching_sizes(pattern: str) -> dict[str, int]:
    """Canonical path -> size in bytes of each file `pattern` matches; none is an error,
    not an empty input. (A local pattern is made absolute first: Beam matches nothing
    for a bare `*.jsonl`.)"""
    absolute = pattern if FileSystems.get_scheme(pattern) else os.path.abspath(pattern)
    with _reading(pattern):
        found = FileSystems.match([absolute])[0].metadata_list
    if not found:
        raise _unreadable(pattern, "no file matches it")
    return {canonical_path(metadata.path): metadata.size_in_bytes for metadata in found}


def matching_files(pattern: str) -> list[str]:
    """Canonical paths of the files `pattern` matches, as `matching_sizes`."""
    return list(matching_sizes(pattern))


def _version(path: str) -> tuple[int, float]:
    """(size, last modified) of a file, to notice one that changes while it is read."""
    metadata = FileSystems.get_filesystem(path).metadata(path)  # the path, not a glob
    return metadata.size_in_bytes, metadata.last_updated_in_seconds


def _decompressor(compression: str):
    """The decompressor Beam's CompressedFile would use for `compression`."""
    if compression == CompressionTypes.GZIP:
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if compression == CompressionTypes.DEFLATE:
        return zlib.decompressobj()
    if compression == CompressionTypes.BZIP2:
        return bz2.BZ2Decompressor()
    if compression == CompressionTypes.LZMA:
        return lzma.LZMADecompressor()
    assert compression == CompressionTypes.ZSTD, compression
    return zstandard.ZstdDecompressor(max_window_size=2 ** 31).decompressobj()


def decompress(f, compression: str, block: int = 8 << 20) -> bytes:
    """The whole content of compressed file `f`, concatenated streams included.

    Beam's CompressedFile stops at the end of the compressed bytes without asking
    the decompressor whether its stream ended, so a truncated file reads as a
    shorter one. Here every stream must reach its end marker, or EOFError."""
    out, decompressor = [], _decompressor(compression)
    for chunk in iter(lambda: f.read(block), b""):
        while chunk:
            if decompressor.eof:
                decompressor = _decompressor(compression)
            out.append(decompressor.decompress(chunk))
            chunk = decompressor.unused_data if decompressor.eof else b""
    if out and not decompressor.eof:
        raise EOFError(f"the {compression} stream ends before its end marker (truncated)")
    return b"".join(out)


# The first bytes of compressed data no JSON line starts with (they are not UTF-8),
# and the name that would have it decompressed.
_MAGIC = ((b"\x1f\x8b", "gzip", ".gz"), (b"\x28\xb5\x2f\xfd", "zstd", ".zst"),
          (b"\xfd7zXZ\x00", "xz", ".xz"))
_HEAD = max(len(magic) for magic, _, _ in _MAGIC)


def _misnamed_compression(path: str, head: bytes) -> None:
    """Refuses a file read as text that holds compressed data: each of its lines would
    be a dead letter, and the run would succeed without one of its events."""
    for magic, kind, suffix in _MAGIC:
        if head.startswith(magic):
            raise _unreadable(path, f"it holds {kind} data, but its name does not end in "
                              f"{suffix} (rename it to have it decompressed)")


class _PlanRanges(beam.DoFn):
    def __init__(self, range_bytes: int):
        self._range_bytes = range_bytes

    def process(self, path: str):
        with _reading(path):
            if CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED:
                yield path, 0, None, 1, None  # a compressed file cannot be entered midway
                return
            version = _version(path)
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                _misnamed_compression(path, f.read(_HEAD))
                f.seek(0)
                ranges = plan_ranges(f, self._range_bytes)
                size = f.tell()
            if size != version[0] or _version(path) != version:
                raise _unreadable(path, "it changed while it was planned")
        for start, end, first in ranges:
            yield path, start, size if end is None else end, first, version


class _ReadRange(beam.DoFn):
    """Reads a planned range whole: a compressed file to its streams' end markers, a
    plain range to its planned end, from a file that has not changed since."""

    def __init__(self, batch_size: int):
        self._batch_size = batch_size

    def process(self, file_range):
        path, start, end, first, version = file_range
        with _reading(path):
            if version is None:
                compression = CompressionTypes.detect_compression_type(path)
                with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                    data = decompress(f, compression)
            else:
                with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                    f.seek(start)
                    data = f.read(end - start)
                if len(data) != end - start or _version(path) != version:
                    raise _unreadable(path, "it changed while it was read")
        lines = split_lines(data)
        for at in range(0, len(lines), self._batch_size):
            yield path, first + at, lines[at:at + self._batch_size]


def _payloads(chunk):
    """(path, first line number, lines) -> [Payload(position, order, line)]."""
    path, first, lines = chunk
    return [Payload(f"{path}:{number}", (path, number), line)
            for number, line in enumerate(lines, start=first)]


class ReadPayloadBatches(beam.PTransform):
    """File patterns (local or gs://, globs, compressed) -> lists of Payloads (one a line).

    Lines keep their file and line number: dead letters point at them, and
    the smallest (path, line) copy of a duplicated identity is the one kept,
    paths spelled canonically (`canonical_path`). A file two patterns match is
    read once.
    Batches of lines, not single lines, travel between steps (throughput).
    A file is planned into line-aligned byte ranges that know their first line
    number, and only the (small) ranges are reshuffled, so every worker reads
    and parses ranges of one big file itself: no line crosses a shuffle.
    A pattern that matches nothing, or a file that cannot be read whole (a
    truncated or corrupt compressed stream, compressed data in a file not named
    so, a file that changes while it is read) fails the run with
    `UnreadableInput`: input is never half read, nor read as what it is not.
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
                | "Match" >> beam.FlatMap(matching_files)
                | "OncePerFile" >> beam.Distinct()
                | "PlanRanges" >> beam.ParDo(_PlanRanges(self._range_bytes))
                | "Spread" >> beam.Reshuffle()
                | "ReadRanges" >> beam.ParDo(_ReadRange(self._batch_size))
                | "Payloads" >> beam.Map(_payloads))


class _WriteSortedLines(beam.DoFn):
    def __init__(self, path: str):
        self._path = path

    def process(self, lines):
        with FileSystems.create(self._path) as f:
            _write_in_chunks(f, sorted(lines), _text_chunk)
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


_WRITE_CHUNK = 8192  # lines encoded and written at a time


def _write_in_chunks(f, items, to_bytes) -> None:
    """Writes items a chunk at a time: one write call per line costs more than the line."""
    items = iter(items)
    while chunk := list(itertools.islice(items, _WRITE_CHUNK)):
        f.write(to_bytes(chunk))


def _text_chunk(lines: list[str]) -> bytes:
    """Text lines, each ending in a newline, as UTF-8."""
    return ("\n".join(lines) + "\n").encode("utf-8")


class _WriteSortedPart(beam.DoFn):
    def __init__(self, path: str, to_line):
        self._path, self._to_line = path, to_line

    def process(self, block):
        part = f"{self._path}.part-{uuid.uuid4().hex}"
        lines = sorted(map(self._to_line, block))
        with FileSystems.create(part, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            _write_in_chunks(f, lines, _text_chunk)
        yield part


class _MergeParts(beam.DoFn):
    def __init__(self, path: str):
        self._path = path

    def process(self, parts):
        """Idempotent: parts are deleted only once the file is whole, so a run of the
        step again that finds one gone (a retry of a finished step) only finishes that."""
        parts = sorted(parts)
        present = [p for p in parts if FileSystems.exists(p)]
        if len(present) == len(parts):
            opened = [FileSystems.open(p, compression_type=CompressionTypes.UNCOMPRESSED)
                      for p in parts]
            try:
                merged = heapq.merge(*opened)  # lines of bytes, each with its newline
                with FileSystems.create(self._path) as f:
                    _write_in_chunks(f, merged, b"".join)
            finally:
                for part in opened:
                    part.close()
        if present:
            FileSystems.delete(present)
        yield self._path


class WriteSortedBlocks(beam.PTransform):
    """Blocks (lists) of items -> one sorted file of their lines (`to_line`) at `path`,
    as WriteSortedLines writes it, in memory bounded by the largest block.

    Each block is sorted into a part file beside `path`, and one streaming merge
    of the parts writes the file. Lines compare as their UTF-8 bytes, which order
    as their text does; they hold no raw control character (JSON lines), so the
    newline each keeps ends the comparison as the end of the text would."""

    def __init__(self, path: str, to_line):
        super().__init__()
        self._path, self._to_line = path, to_line

    def expand(self, blocks):
        return (blocks
                | "SortParts" >> beam.ParDo(_WriteSortedPart(self._path, self._to_line))
                | "Unwindow" >> beam.WindowInto(GlobalWindows())
                | "Gather" >> beam.combiners.ToList()
                | "Merge" >> beam.ParDo(_MergeParts(self._path)))


# ---------------------------------------------------------------- results, all or nothing

def staging_dir(output_dir: str) -> str:
    """Where a run writes its results before they move into `output_dir`: a fresh
    folder beside it (same filesystem, so moving a file is a rename)."""
    final = output_dir.rstrip("/")
    if not FileSystems.get_scheme(final):
        final = os.path.abspath(final)
    return f"{final}.partial-{uuid.uuid4().hex[:12]}"


def remove_results(output_dir: str, names: list[str]) -> None:
    """Deletes a previous run's result files (the last name, the summary, first) so
    that a run which then fails, or is killed, leaves nothing that looks current."""
    paths = [FileSystems.join(output_dir, name) for name in reversed(names)]
    for path in paths:
        if FileSystems.exists(path):
            FileSystems.delete([path])


def discard_staging(staging: str) -> None:
    if FileSystems.exists(staging):
        FileSystems.delete([staging])


class _MoveIntoPlace(beam.DoFn):
    def __init__(self, staging: str, output_dir: str, names: list[str]):
        self._staging, self._output_dir, self._names = staging, output_dir, names

    def process(self, written):
        """Idempotent: a file already moved (by an earlier attempt of the step, stopped
        midway or finished: the run removed the previous results first) stays."""
        if not FileSystems.exists(self._output_dir):
            FileSystems.mkdirs(self._output_dir)
        for name in self._names:  # in order: the summary last
            staged = FileSystems.join(self._staging, name)
            final = FileSystems.join(self._output_dir, name)
            if FileSystems.exists(staged) or not FileSystems.exists(final):
                FileSystems.rename([staged], [final])
        discard_staging(self._staging)
        yield self._output_dir


class PublishResults(beam.PTransform):
    """Paths written into `staging` -> those files moved into `output_dir`, once every
    one is written, in the order of `names` (the summary last: a summary in
    `output_dir` means the files beside it are complete and from its run). A run
    that fails before this step leaves only its staging folder behind."""

    def __init__(self, staging: str, output_dir: str, names: list[str]):
        super().__init__()
        self._staging, self._output_dir, self._names = staging, output_dir, list(names)

    def expand(self, written):
        return (written
                | "Flatten" >> beam.Flatten()
                | "AllWritten" >> beam.combiners.ToList()
                | "MoveIntoPlace" >> beam.ParDo(
                    _MoveIntoPlace(self._staging, self._output_dir, self._names)))
