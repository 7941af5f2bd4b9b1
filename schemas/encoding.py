"""Compressed messages: the `content-encoding` Pub/Sub attribute (docs/cloudevents.md).

A publisher may compress a message's data (a CloudEvents batch, above all: JSON
events repeat their attribute names and compress five- to ten-fold, and
Pub/Sub bills the bytes it carries). `decode_content` undoes it before the
payload is judged, with a bound on what it may expand to, so a zip bomb is a
dead letter and not a worker out of memory. Pure: no Beam, no I/O.
"""
from __future__ import annotations

import zlib

import zstandard

CONTENT_ENCODING = "content-encoding"
GZIP, ZSTD = "gzip", "zstd"
ENCODINGS = (GZIP, ZSTD)
IDENTITY = "identity"  # HTTP's name for "not encoded"; accepted as no attribute
# A 1,000-event batch is about 250 KB decompressed; the bound keeps one message's
# memory bounded while leaving batches room to grow.
DEFAULT_MAX_DECOMPRESSED_BYTES = 64 * 2 ** 20
# zstd input is fed in steps this small, as its decompressor takes no output limit:
# a step holds at most 32 blocks (4 bytes each at the least), so it expands to at
# most 4 MiB (32 x 128 KiB) past the bound before that is noticed.
_ZSTD_STEP = 128


class _TooLarge(Exception):
    pass


def content_encoding(attributes: dict | None) -> str | None:
    """The message's content-encoding (names case-insensitive, value lower-cased), or
    None when it has none, or says identity."""
    for key, value in (attributes or {}).items():
        if isinstance(key, str) and key.lower() == CONTENT_ENCODING:
            encoding = value.strip().lower() if isinstance(value, str) else value
            return None if encoding in ("", IDENTITY) else encoding
    return None


def decode_content(data: bytes, attributes: dict | None, max_bytes: int
                   ) -> tuple[bytes | None, tuple[str, str] | None]:
    """(the data as it was before compression, None), or (None, (code, message)):
    UNSUPPORTED_CONTENT_ENCODING, CORRUPT_COMPRESSION (not, or not wholly, what its
    encoding says: truncated, trailing bytes, a bad checksum), or DECOMPRESSED_TOO_LARGE
    (more than `max_bytes`). Data without a content-encoding comes back as it is.
    Total: nothing in `data` raises."""
    encoding = content_encoding(attributes)
    if encoding is None:
        return data, None
    if encoding not in ENCODINGS:
        return None, ("UNSUPPORTED_CONTENT_ENCODING", f"content-encoding {str(encoding)[:64]!r} "
                      f"is not one tallyflow decodes ({', '.join(ENCODINGS)}, or none)")
    try:
        return (_gunzip if encoding == GZIP else _unzstd)(bytes(data), max_bytes), None
    except _TooLarge:
        return None, ("DECOMPRESSED_TOO_LARGE", f"the {encoding} data decompresses to more "
                      f"than {max_bytes} bytes (--max_decompressed_bytes)")
    except Exception as e:  # zlib.error, ZstdError, or anything else the bytes cause
        return None, ("CORRUPT_COMPRESSION", f"the data is not valid {encoding}: "
                      f"{type(e).__name__}: {str(e)[:200]}")


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    """gzip members one after another (RFC 1952 allows several), all of `data`."""
    out, size = [], 0
    while True:
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = member.decompress(data, max_bytes - size + 1)
        size += len(chunk)
        if size > max_bytes:
            raise _TooLarge
        if not member.eof:
            raise ValueError("truncated: the gzip stream ends before its member does")
        out.append(chunk)
        data = member.unused_data
        if not data:
            return b"".join(out)


def _unzstd(data: bytes, max_bytes: int) -> bytes:
    """zstd frames one after another, all of `data`."""
    out, size, at = [], 0, 0
    while True:
        frame = zstandard.ZstdDecompressor().decompressobj()
        while not frame.eof:
            if at >= len(data):
                raise ValueError("truncated: the data ends inside a zstd frame")
            step = data[at:at + _ZSTD_STEP]
            chunk = frame.decompress(step)
            at += len(step) - len(frame.unused_data)
            size += len(chunk)
            if size > max_bytes:
                raise _TooLarge
            out.append(chunk)
        if at == len(data):
            return b"".join(out)


def compress(data: bytes, encoding: str) -> bytes:
    """`data` compressed as `encoding` (gzip or zstd), for a publisher."""
    if encoding == GZIP:
        return zlib.compress(data, 6, 16 + zlib.MAX_WBITS)
    if encoding == ZSTD:
        # the checksum lets the stream tell a corrupted frame (gzip always has its CRC)
        return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)
    raise ValueError(f"unknown encoding {encoding!r} (one of {', '.join(ENCODINGS)})")
