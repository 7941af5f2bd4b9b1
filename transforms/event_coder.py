"""UsageEventCoder: a UsageEvent in the few bytes Streaming Engine bills for shuffling it.

Every accepted event crosses one shuffle, into deduplication (keyed by identity), and
Streaming Engine bills its encoded bytes. Beam's fallback coder pickled each Reading
and Decimal (about 600 bytes an event). This coder writes the fields positionally
(lengths as varints, text as one UTF-8 blob), and `raw` with its common parts replaced
by one-character marks: the JSON literals of the event's own source, id, type and
subject (already in the record) and the CloudEvents envelope's vocabulary. Valid JSON
never holds a raw control character, so a mark cannot be confused with the text;
a `raw` that does hold one is kept verbatim. Measured in BENCHMARKS.md ("Cost per
billion events"); zstd, even with a dictionary of the envelope, saved nothing more.

The coder decodes only bytes it wrote (the runner's shuffle), never message content.
Changing this format changes the shuffle's coder: a running job is drained and
restored, not updated in place (docs/architecture.md, "Upgrading a running stream").
"""
from __future__ import annotations

import re
from decimal import Decimal

import apache_beam as beam
from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream

from schemas.events import Reading, UsageEvent

VERSION = 1
VERBATIM, MARKED = 0, 1  # how `raw` is kept
# The envelope's vocabulary (CloudEvents 1.0 JSON format), most frequent first.
VOCABULARY = ('"specversion":"1.0"', '"id":', '"source":', '"type":', '"subject":',
              '"time":', '"data":', '"datacontenttype":', '"application/json"',
              '"dataschema":', '"data_base64":')
# Marks: control characters JSON text never holds raw (\t, \n and \r it may).
_MARKS = [chr(c) for c in range(1, 32) if chr(c) not in "\t\n\r"]
_OWN_MARKS = _MARKS[:4]  # the JSON literals of the event's source, id, type, subject
_VOCABULARY_MARKS = tuple(zip(_MARKS[4:], VOCABULARY))
_ANY_MARK = re.compile("[" + "".join(_MARKS) + "]")
TEXT = ("utf-8", "surrogatepass")  # any str survives, as SeenCoder's positions do
_NONE, _DECIMAL, _STR = 0, 1, 2  # a reading's value


def encode_event(event: UsageEvent) -> bytes:
    """The event's bytes (docs/architecture.md, "Upgrading a running stream")."""
    raw, form = _marked(event)
    out = create_OutputStream()
    out.write_byte(VERSION)
    out.write_byte(form)
    _write_int(out, event.time_ns)
    _write_int(out, event.ingest_ns - event.time_ns)  # seconds to minutes: few bytes
    texts = [event.source, event.id, event.type, event.subject, event.position]
    out.write_var_int64(len(event.order))
    for part in event.order:
        if type(part) is str:
            out.write_var_int64(len(part) << 1 | 1)
            texts.append(part)
        elif type(part) is int:
            _write_int(out, part, tag=0)
        else:
            raise TypeError(f"an event's order holds ints and text, not {type(part).__name__}")
    out.write_var_int64(len(event.readings))
    for meter, dimensions, value in event.readings:
        if value is None:
            kind, value = _NONE, ""
        elif type(value) is Decimal:
            kind, value = _DECIMAL, str(value)  # exact: Decimal(str(d)) keeps digits, exponent
        elif type(value) is str:
            kind = _STR
        else:
            raise TypeError("a reading's value is a Decimal, text or None, not "
                            f"{type(value).__name__}")
        out.write_var_int64(len(meter))
        out.write_var_int64(len(dimensions))
        out.write_var_int64(len(value) << 2 | kind)
        texts += (meter, dimensions, value)
    for text in texts[:5]:
        out.write_var_int64(len(text))
    texts.append(raw)
    out.write("".join(texts).encode(*TEXT))
    return out.get()


def decode_event(encoded: bytes) -> UsageEvent:
    """`encode_event`'s bytes back to the event they were written from."""
    stream = create_InputStream(encoded)
    version = stream.read_byte()
    if version != VERSION:
        raise ValueError(f"not a shuffled event of format {VERSION} (format {version})")
    form = stream.read_byte()
    time_ns = _read_int(stream, stream.read_byte())
    ingest_ns = time_ns + _read_int(stream, stream.read_byte())
    order_shape = []  # (text length, None) or (None, the int)
    for _ in range(stream.read_var_int64()):
        tagged = stream.read_var_int64()
        order_shape.append((tagged >> 1, None) if tagged & 1
                           else (None, _read_int(stream, tagged >> 1)))
    reading_shape = [stream.read_var_int64() for _ in range(3 * stream.read_var_int64())]
    lengths = [stream.read_var_int64() for _ in range(5)]
    text = stream.read_all(False).decode(*TEXT)
    fields, at = [], 0
    for length in lengths:
        fields.append(text[at:at + length])
        at += length
    order = []
    for length, number in order_shape:
        if length is None:
            order.append(number)
        else:
            order.append(text[at:at + length])
            at += length
    readings = []
    for i in range(0, len(reading_shape), 3):
        meter_length, dimensions_length, tagged = reading_shape[i:i + 3]
        meter = text[at:at + meter_length]
        at += meter_length
        dimensions = text[at:at + dimensions_length]
        at += dimensions_length
        kind, length = tagged & 3, tagged >> 2
        value = text[at:at + length]
        at += length
        readings.append(Reading(meter, dimensions, None if kind == _NONE else
                                Decimal(value) if kind == _DECIMAL else value))
    source, event_id, event_type, subject, position = fields
    raw = text[at:]
    if form == MARKED:
        raw = _expanded(raw, fields)
    return UsageEvent(source, event_id, event_type, subject, time_ns, raw, position,
                      tuple(order), tuple(readings), ingest_ns)


def _marked(event: UsageEvent) -> tuple[str, int]:
    """`raw` with its common parts marked, or verbatim when it (or a literal) holds a mark.

    Each replaced part is text of the original (a literal holds no mark), so expanding
    every mark gives the original back however the parts overlapped."""
    own = (event.source, event.id, event.type, event.subject)
    raw = event.raw
    if _ANY_MARK.search(raw) or _ANY_MARK.search("".join(own)):
        return raw, VERBATIM
    for mark, field in zip(_OWN_MARKS, own):
        raw = raw.replace(f'"{field}"', mark, 1)
    for mark, text in _VOCABULARY_MARKS:
        raw = raw.replace(text, mark, 1)
    return raw, MARKED


def _expanded(raw: str, fields: list[str]) -> str:
    for mark, text in _VOCABULARY_MARKS:
        if mark in raw:
            raw = raw.replace(mark, text, 1)
    for mark, field in zip(_OWN_MARKS, fields):
        if mark in raw:
            raw = raw.replace(mark, f'"{field}"', 1)
    return raw


def _write_int(out, n: int, tag: int | None = None) -> None:
    """Any int (times are not bounded to 64 bits): its byte length, then its bytes.
    With `tag`, the length is written as a varint, shifted left by a bit for the tag."""
    size = (n.bit_length() + 8) // 8  # room for the sign bit
    if tag is None:
        out.write_byte(size)
    else:
        out.write_var_int64(size << 1 | tag)
    out.write(n.to_bytes(size, "little", signed=True))


def _read_int(stream, size: int) -> int:
    return int.from_bytes(stream.read(size), "little", signed=True)


class UsageEventCoder(beam.coders.Coder):
    """Beam's coder for UsageEvent PCollections (transforms/dedup.py registers it)."""

    def encode(self, event: UsageEvent) -> bytes:
        return encode_event(event)

    def decode(self, encoded: bytes) -> UsageEvent:
        return decode_event(encoded)

    def to_type_hint(self):
        return UsageEvent

