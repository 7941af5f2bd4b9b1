"""Reading JSONL files as line-aligned ranges: every line once, with its line number;
writing blocks of lines as one sorted file."""
import gzip
import io
import random
import re

import pytest

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.events import Payload
from apache_beam.io.filesystems import FileSystems

from transforms.files import (ReadPayloadBatches, UnreadableInput, WriteSortedBlocks,
                             _MergeParts, _MoveIntoPlace, _PlanRanges, _ReadRange,
                             _WriteSortedPart, plan_ranges, split_lines)


def lines_of(data: bytes) -> list[bytes]:
    """What iterating the file gives, minus line endings (the definition ranges must meet)."""
    return [line.rstrip(b"\r\n") for line in io.BytesIO(data)]


def test_ranges_cover_every_line_once_with_its_number():
    rng = random.Random(3)
    for _ in range(500):
        lines = [bytes(rng.choice(b"ab{}\r ") for _ in range(rng.randint(0, 30)))
                 for _ in range(rng.randint(0, 60))]
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        ranges = plan_ranges(io.BytesIO(data), target=rng.randint(1, 200),
                             block=rng.randint(1, 64))
        got = []
        for start, end, first in ranges:
            assert first == len(got) + 1
            got += split_lines(data[start:end])
        assert got == lines_of(data), data
        assert [r[1] for r in ranges[:-1]] == [r[0] for r in ranges[1:]]


def test_pipeline_reads_ranges_of_plain_and_gzip_files(tmp_path):
    plain = b"".join(b'{"n": %d}\r\n' % n if n % 7 else b"\n" for n in range(1, 400))
    (tmp_path / "a.jsonl").write_bytes(plain)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"x\ny"))
    expected = [Payload(f"{tmp_path}/a.jsonl:{n}", (f"{tmp_path}/a.jsonl", n), line)
                for n, line in enumerate(lines_of(plain), start=1)]
    expected += [Payload(f"{tmp_path}/b.jsonl.gz:1", (f"{tmp_path}/b.jsonl.gz", 1), b"x"),
                 Payload(f"{tmp_path}/b.jsonl.gz:2", (f"{tmp_path}/b.jsonl.gz", 2), b"y")]
    with TestPipeline() as p:
        batches = p | ReadPayloadBatches([str(tmp_path / "*")], batch_size=7, range_bytes=100)
        assert_that(batches | beam.FlatMap(lambda batch: batch), equal_to(expected))


# ---------------------------------------------------------------- never half read

def compressed(kind: str, data: bytes) -> bytes:
    import bz2
    import lzma
    import zlib

    import zstandard

    return {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
            "zst": zstandard.ZstdCompressor().compress, "deflate": zlib.compress}[kind](data)


EVENT_LINES = b"".join(b'{"n": %d, "pad": "%s"}\n' % (n, b"x" * (n % 13)) for n in range(2000))


def assert_reads(patterns, expected, project=lambda item: item):
    """The transform yields exactly `expected` (as `project` sees each item)."""
    with TestPipeline() as p:
        items = p | ReadPayloadBatches(patterns) | beam.FlatMap(lambda batch: batch)
        assert_that(items | beam.Map(project), equal_to(expected))


def line_of(item):
    return item.data


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "zst", "deflate"])
def test_a_complete_compressed_file_is_read_whole(tmp_path, kind):
    path = tmp_path / f"events.jsonl.{kind}"
    path.write_bytes(compressed(kind, EVENT_LINES))
    assert_reads([str(path)], EVENT_LINES.splitlines(), line_of)


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "zst", "deflate"])
def test_a_truncated_compressed_file_fails_the_run_naming_it(tmp_path, kind):
    whole = compressed(kind, EVENT_LINES)
    path = tmp_path / f"events.jsonl.{kind}"
    path.write_bytes(whole[:len(whole) * 2 // 5])
    with pytest.raises(UnreadableInput, match=f"cannot read {re.escape(str(path))}: "):
        assert_reads([str(tmp_path / "*")], [])


def test_concatenated_gzip_members_and_an_empty_gzip_file_are_whole(tmp_path):
    half = len(EVENT_LINES) // 2
    (tmp_path / "two.jsonl.gz").write_bytes(gzip.compress(EVENT_LINES[:half])
                                            + gzip.compress(EVENT_LINES[half:]))
    (tmp_path / "empty.jsonl.gz").write_bytes(b"")
    assert_reads([str(tmp_path / "*")], EVENT_LINES.splitlines(), line_of)


@pytest.mark.parametrize("content", [EVENT_LINES, gzip.compress(EVENT_LINES) + b"garbage"])
def test_a_file_named_gz_that_is_not_gzip_fails_naming_it(tmp_path, content):
    path = tmp_path / "plain.jsonl.gz"
    path.write_bytes(content)
    with pytest.raises(UnreadableInput,
                       match=f"cannot read {re.escape(str(path))}: corrupt compressed data "):
        assert_reads([str(path)], [])


def test_a_pattern_matching_nothing_fails_naming_it(tmp_path):
    pattern = str(tmp_path / "nothing-*.jsonl")
    with pytest.raises(UnreadableInput, match=f"cannot read {re.escape(pattern)}: no file"):
        assert_reads([pattern], [])


@pytest.mark.parametrize("change", [b"", b'{"n": "appended"}\n'])
def test_a_plain_file_that_changes_between_planning_and_reading_is_refused(tmp_path, change):
    path = tmp_path / "growing.jsonl"
    path.write_bytes(EVENT_LINES)
    ranges = list(_PlanRanges(1000).process(str(path)))
    assert len(ranges) > 3
    reader = _ReadRange(100)
    assert list(reader.process(ranges[0]))  # unchanged: read
    with path.open("r+b") as f:
        if change:
            f.seek(0, 2)
            f.write(change)
        else:
            f.truncate(len(EVENT_LINES) - 10)
    for file_range in (ranges[0], ranges[-1]):
        with pytest.raises(UnreadableInput, match="changed while it was read"):
            list(reader.process(file_range))


def test_positions_do_not_depend_on_how_a_path_is_spelled(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jsonl").write_bytes(b"1\n2\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "a.jsonl")
    monkeypatch.chdir(tmp_path / "sub")
    canonical = str((tmp_path / "a.jsonl").resolve())
    expected = [Payload(f"{canonical}:1", (canonical, 1), b"1"),
                Payload(f"{canonical}:2", (canonical, 2), b"2")]
    for spelling in ("../a.jsonl", str(tmp_path / "a.jsonl"), "../sub/../a.jsonl",
                     "../link.jsonl"):
        assert_reads([spelling], expected)


def test_a_file_two_patterns_match_is_read_once(tmp_path, monkeypatch):
    (tmp_path / "a.jsonl").write_bytes(b"1\n2\n")
    (tmp_path / "b.jsonl").write_bytes(b"3\n")
    monkeypatch.chdir(tmp_path)
    assert_reads(["*.jsonl", "a.jsonl", str(tmp_path / "a.jsonl")], [b"1", b"2", b"3"], line_of)


def test_a_file_whose_name_looks_like_a_glob_is_read(tmp_path):
    (tmp_path / "usage[1].jsonl").write_bytes(b"1\n2\n")
    assert_reads([str(tmp_path / "*.jsonl")], [b"1", b"2"], line_of)


@pytest.mark.parametrize("blocks", [
    [["b", "é", "a"], [], ["a b", "\u2028", "z", "a"], ["ab"]],  # "a" twice; non-ASCII
    [[]],
    [],  # no block at all: an empty file
])
def test_blocks_are_written_as_one_sorted_file_and_their_parts_removed(tmp_path, blocks):
    path = str(tmp_path / "out.jsonl")
    with TestPipeline() as p:
        _ = p | beam.Create(blocks, reshuffle=False) | WriteSortedBlocks(path, str.upper)
    expected = sorted(line.upper() for block in blocks for line in block)
    with open(path, encoding="utf-8") as f:
        assert f.read() == "".join(f"{line}\n" for line in expected)
    assert [f.name for f in tmp_path.iterdir()] == ["out.jsonl"]


# ---------------------------------------------------------------- retried steps

def test_a_merge_retried_after_it_finished_yields_the_same_file(tmp_path):
    """A runner may run a step again after it finished (a worker lost before its result
    was committed): the parts it deleted must not fail the retry, nor change the file."""
    path = str(tmp_path / "out.jsonl")
    parts = [next(_WriteSortedPart(path, str).process(block)) for block in (["b", "a"], ["c"])]
    merge = _MergeParts(path)
    assert list(merge.process(parts)) == [path]
    assert list(merge.process(parts)) == [path]
    with open(path, encoding="utf-8") as f:
        assert f.read() == "a\nb\nc\n"
    assert [f.name for f in tmp_path.iterdir()] == ["out.jsonl"]


def test_moving_results_in_is_retried_after_a_failure_midway_or_after_it_finished(
        tmp_path, monkeypatch):
    staging, out = tmp_path / "out.partial-1", tmp_path / "out"
    staging.mkdir()
    names = ["usage.jsonl", "dead_letter.jsonl", "summary.json"]
    for name in names:
        (staging / name).write_text(name)
    move = _MoveIntoPlace(str(staging), str(out), names)
    renamed = []

    def rename_once_then_fail(sources, targets, real=FileSystems.rename):
        if renamed:
            raise OSError("the worker was lost")
        renamed.append(sources)
        real(sources, targets)

    monkeypatch.setattr(FileSystems, "rename", rename_once_then_fail)
    with pytest.raises(OSError, match="worker was lost"):
        list(move.process([]))
    monkeypatch.undo()
    assert list(move.process([])) == [str(out)]  # the retry
    assert list(move.process([])) == [str(out)]  # and once more, after it finished
    assert {p.name: p.read_text() for p in out.iterdir()} == {name: name for name in names}
    assert not staging.exists()


@pytest.mark.parametrize("kind", ["gz", "xz", "zst"])
def test_compressed_data_in_a_file_not_named_so_fails_naming_it(tmp_path, kind):
    """Read as text, its every line would be a dead letter and the run would succeed:
    no JSON line starts with these formats' magic bytes (not UTF-8), so it is refused."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(compressed(kind, EVENT_LINES))
    with pytest.raises(UnreadableInput, match=f"cannot read {re.escape(str(path))}: it holds "
                                              f".*data, but its name does not end in .{kind}"):
        assert_reads([str(path)], [])
