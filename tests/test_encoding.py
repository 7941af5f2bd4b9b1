"""Compressed messages: the decode rule alone, then what the parser makes of it."""
import gzip
import json
import zlib

import pytest
import zstandard

from schemas.catalog import parse_catalog
from schemas.encoding import decode_content
from schemas.events import Limits, Rejection, UsageEvent, parse_payload

BOUND = 1000
BATCH = json.dumps([{"specversion": "1.0", "id": f"e{n}", "source": "//s", "type": "call",
                     "subject": "acme", "time": "2026-11-02T09:00:00Z",
                     "data": {"amount": n}} for n in range(3)]).encode()
CATALOG = parse_catalog({"meters": [{"key": "amount", "event_type": "call",
                                     "aggregation": "SUM", "value_property": "$.amount"}]})


def zstd(data: bytes) -> bytes:
    """With the frame's checksum, as `tallyflow publish` writes it: without one, zstd
    cannot tell a flipped byte (gzip always has its CRC)."""
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


def gz(data: bytes) -> bytes:
    # written by the standard library's gzip module, not the code under test; no
    # timestamp, so that the same data gives the same bytes (and test ids) every run
    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize("attributes", [None, {}, {"content-encoding": "identity"},
                                        {"Content-Encoding": ""}, {"ce-id": "x"}])
def test_data_without_an_encoding_comes_back_as_it_is(attributes):
    data = b"\xff not even json"
    assert decode_content(data, attributes, BOUND) == (data, None)


@pytest.mark.parametrize("name", ["content-encoding", "Content-Encoding", "CONTENT-ENCODING"])
@pytest.mark.parametrize("label,pack", [("gzip", gz), ("zstd", zstd), ("GZip", gz),
                                        (" zstd ", zstd)])
def test_gzip_and_zstd_decode_whatever_the_spelling(name, label, pack):
    assert decode_content(pack(BATCH), {name: label}, 10 * len(BATCH)) == (BATCH, None)


@pytest.mark.parametrize("label,pack", [("gzip", gz), ("zstd", zstd)])
def test_several_members_or_frames_decode_as_one(label, pack):
    assert decode_content(pack(b"ab") + pack(b"") + pack(b"cd"), {"content-encoding": label},
                          BOUND) == (b"abcd", None)


@pytest.mark.parametrize("label,pack", [("gzip", gz), ("zstd", zstd)])
def test_exactly_the_bound_decodes_one_byte_more_is_too_large(label, pack):
    attributes = {"content-encoding": label}
    assert decode_content(pack(b"x" * BOUND), attributes, BOUND) == (b"x" * BOUND, None)
    data, (code, message) = decode_content(pack(b"x" * (BOUND + 1)), attributes, BOUND)
    assert (data, code) == (None, "DECOMPRESSED_TOO_LARGE") and str(BOUND) in message


@pytest.mark.parametrize("label,pack", [("gzip", gz), ("zstd", zstd)])
def test_a_zip_bomb_is_refused_without_expanding_it(label, pack):
    bomb = pack(b"\0" * (256 * 2 ** 20))  # 256 MiB of zeros in a few hundred KB at most
    assert len(bomb) < 2 ** 20
    data, (code, _) = decode_content(bomb, {"content-encoding": label}, 2 ** 20)
    assert (data, code) == (None, "DECOMPRESSED_TOO_LARGE")


def corruptions(packed: bytes) -> list[bytes]:
    middle = len(packed) // 2
    return [b"", packed[:-1], packed[:middle], packed + b"junk", packed + b"\0",
            packed[:middle] + bytes([packed[middle] ^ 0xFF]) + packed[middle + 1:],
            b"not compressed at all", BATCH]


@pytest.mark.parametrize("label,pack", [("gzip", gz), ("zstd", zstd)])
def test_corrupt_truncated_or_padded_data_is_corrupt(label, pack):
    for bad in corruptions(pack(BATCH)):
        data, (code, message) = decode_content(bad, {"content-encoding": label}, BOUND)
        assert (data, code) == (None, "CORRUPT_COMPRESSION"), bad
        assert label in message


@pytest.mark.parametrize("label", ["br", "deflate", "gzip, zstd", "x" * 500])
def test_an_encoding_tallyflow_does_not_decode_is_unsupported(label):
    data, (code, message) = decode_content(gz(BATCH), {"content-encoding": label}, BOUND)
    assert (data, code) == (None, "UNSUPPORTED_CONTENT_ENCODING")
    assert len(message) < 200


def test_a_gzip_stream_written_by_zlib_with_a_gzip_header_decodes():
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    packed = packer.compress(BATCH) + packer.flush()
    assert decode_content(packed, {"content-encoding": "gzip"}, BOUND) == (BATCH, None)


# ----------------------------------------------------------- the parser

LIMITS = Limits(now_ns=None, max_decompressed_bytes=BOUND)
STRUCTURED = {"content-type": "application/cloudevents-batch+json", "ce-time": "x"}


def parse(data: bytes, attributes: dict) -> list:
    return parse_payload(data, "m1", (), CATALOG, LIMITS, 1_800_000_000 * 10 ** 9, attributes)


@pytest.mark.parametrize("label,pack", [("gzip", gz), ("zstd", zstd)])
def test_a_compressed_batch_is_read_as_the_batch_itself(label, pack):
    plain = parse(BATCH, STRUCTURED)
    packed = parse(pack(BATCH), {**STRUCTURED, "content-encoding": label})
    assert all(isinstance(e, UsageEvent) for e in packed) and len(packed) == 3
    assert packed == plain


def test_a_compressed_binary_mode_event_is_read_as_the_uncompressed_one():
    attributes = {"ce-specversion": "1.0", "ce-id": "b1", "ce-source": "//s", "ce-type": "call",
                  "ce-subject": "acme", "ce-time": "2026-11-02T09:00:00Z",
                  "content-type": "application/json"}
    data = b'{"amount": 7}'
    [plain] = parse(data, attributes)
    [packed] = parse(gz(data), {**attributes, "content-encoding": "gzip"})
    assert isinstance(packed, UsageEvent) and packed == plain
    assert [r.value for r in packed.readings] == [7]


@pytest.mark.parametrize("bad,code", [(gz(BATCH)[:-4], "CORRUPT_COMPRESSION"),
                                      (gz(b" " * (BOUND + 1)), "DECOMPRESSED_TOO_LARGE")],
                         ids=["truncated", "too-large"])
def test_a_corrupt_or_oversized_message_is_one_dead_letter_with_its_bytes(bad, code):
    attributes = {**STRUCTURED, "content-encoding": "gzip"}
    [rejected] = parse(bad, attributes)
    assert isinstance(rejected, Rejection) and rejected.error_code == code
    assert rejected.payload_bytes == bad and rejected.attributes == attributes
    assert rejected.position == "m1"


def test_a_rejection_inside_a_compressed_batch_holds_the_event_uncompressed():
    """Its payload is the decompressed event, so its attributes no longer say gzip."""
    batch = BATCH.replace(b'"amount": 2', b'"amount": -2')
    results = parse(zstd(batch), {**STRUCTURED, "Content-Encoding": "zstd"})
    [rejected] = [r for r in results if isinstance(r, Rejection)]
    assert rejected.error_code == "VALUE_NEGATIVE" and rejected.position == "m1#2"
    assert json.loads(rejected.payload)["id"] == "e2" and rejected.payload_bytes is None
    assert rejected.attributes == STRUCTURED
