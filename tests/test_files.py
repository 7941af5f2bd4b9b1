"""Reading JSONL files as line-aligned ranges: every line once, with its line number."""
import gzip
import io
import random

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.files import ReadPayloadBatches, plan_ranges, split_lines


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
    expected = [(f"{tmp_path}/a.jsonl:{n}", (f"{tmp_path}/a.jsonl", n), line)
                for n, line in enumerate(lines_of(plain), start=1)]
    expected += [(f"{tmp_path}/b.jsonl.gz:1", (f"{tmp_path}/b.jsonl.gz", 1), b"x"),
                 (f"{tmp_path}/b.jsonl.gz:2", (f"{tmp_path}/b.jsonl.gz", 2), b"y")]
    with TestPipeline() as p:
        batches = p | ReadPayloadBatches([str(tmp_path / "*")], batch_size=7, range_bytes=100)
        assert_that(batches | beam.FlatMap(lambda batch: batch), equal_to(expected))
