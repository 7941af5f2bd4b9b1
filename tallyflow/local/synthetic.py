"""A seeded stream of synthetic usage events, with the truth about every one.

The stream imitates the product in `tallyflow/examples/meters.yaml`: API requests, LLM
completions, active users, connection gauges and storage snapshots from
customers of very different sizes (Zipf-weighted), some of whom stamp times in
their local offset. A configurable share of the stream is what billing must
survive: redelivered duplicates (some with a different payload: conflicts),
late and too-late events, and invalid events of every kind the parser rejects.

Pure: no clock, no I/O, `random.Random(seed)` only, so the same config gives
the same bytes. Each `Message` carries a `Label` per event saying what it is
(and, for an invalid event, the error code the pipeline must give it), so tests
and the demo can do exact accounting. Lateness is relative to the stream's own
clock: the slot at which the message is emitted (`emitted_ns`), which is what a
watermark that tracks event time sees (Dataflow with a timestamp attribute,
`TestStream`, or `tallyflow publish --realtime` against the DirectRunner).
Numbers in `data` are exact ints or decimal strings, never floats.
"""
from __future__ import annotations

import itertools
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from schemas.values import NS, format_time, parse_rfc3339

MINUTE_NS = 60 * NS
HOUR_NS = 60 * MINUTE_NS

ON_TIME, LATE, TOO_LATE = "on_time", "late", "too_late"
DUPLICATE, CONFLICT, INVALID = "duplicate", "conflict", "invalid"
KINDS = (ON_TIME, LATE, TOO_LATE, DUPLICATE, CONFLICT, INVALID)
FIRST_COPIES = (ON_TIME, LATE, TOO_LATE)  # kinds that carry a new, valid identity

EVENT_TYPES = ("api.request", "llm.completion", "user.active", "connection.gauge",
               "storage.snapshot")
TYPE_WEIGHTS = {"api.request": 50, "llm.completion": 25, "user.active": 15,
                "connection.gauge": 5, "storage.snapshot": 5}
SOURCES = {"api.request": "//api.example.com/edge-{region}",
           "llm.completion": "//llm.example.com/gateway",
           "user.active": "//app.example.com/sessions",
           "connection.gauge": "//realtime.example.com/{region}",
           "storage.snapshot": "//storage.example.com/metering"}
NUMERIC_FIELDS = {"api.request": ("bytes_out",),
                  "llm.completion": ("input_tokens", "output_tokens", "cost_usd"),
                  "connection.gauge": ("connections",), "storage.snapshot": ("gb",)}
# USD per million tokens (input, output).
MODELS = {"gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
          "claude-sonnet-4": (Decimal("3"), Decimal("15")),
          "llama-3.1-70b": (Decimal("0.88"), Decimal("0.88"))}
OFFSETS_MINUTES = (0, 0, 0, 60, -300, 330)  # most producers send Z
INVALID_REASONS = ("MALFORMED_JSON", "MISSING_ATTRIBUTE", "UNSUPPORTED_SPECVERSION", "BAD_TIME",
                   "FUTURE_TIME", "VALUE_NOT_NUMERIC", "VALUE_NEGATIVE")
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type", "subject", "time")
DUPLICATE_LOOKBACK = 1000  # redeliveries repeat recent events
MARGIN_NS = MINUTE_NS  # keeps late / too-late events clear of the boundary


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; the fractions are shares of the `events` slots."""

    seed: int = 0
    customers: int = 10
    events: int = 1000
    rate: float = 10.0  # events per second of event time
    start_ns: int = parse_rfc3339("2026-01-01T00:00:00Z")
    batch_size: int = 1  # events per message; > 1 sends CloudEvents batches (JSON arrays)
    duplicate_fraction: float = 0.0
    conflict_fraction: float = 0.0  # share of the duplicates whose payload differs
    late_fraction: float = 0.0
    too_late_fraction: float = 0.0
    invalid_fraction: float = 0.0
    window_ns: int = HOUR_NS
    allowed_lateness_ns: int = 48 * HOUR_NS
    event_types: tuple[str, ...] = EVENT_TYPES
    max_users: int = 60  # distinct user ids per customer (UNIQUE_COUNT cardinality), >= 5

    def __post_init__(self):
        fractions = {name: getattr(self, name) for name in (
            "duplicate_fraction", "conflict_fraction", "late_fraction", "too_late_fraction",
            "invalid_fraction")}
        for name, value in fractions.items():
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if sum(v for k, v in fractions.items() if k != "conflict_fraction") > 1:
            raise ValueError("duplicate, late, too-late and invalid fractions add up to more "
                             "than 1")
        if self.max_users < 5:
            raise ValueError(f"max_users must be at least 5, got {self.max_users}")
        if self.customers < 1 or self.events < 0 or self.batch_size < 1 or self.rate <= 0:
            raise ValueError("customers and batch_size must be >= 1, events >= 0, rate > 0")
        unknown = set(self.event_types) - set(EVENT_TYPES)
        if unknown or not self.event_types:
            raise ValueError(f"event_types must be among {', '.join(EVENT_TYPES)}")
        if self.late_fraction and self.allowed_lateness_ns <= self.window_ns + 2 * MARGIN_NS:
            raise ValueError("late events need allowed_lateness longer than the window + 2 min")


@dataclass(frozen=True)
class Label:
    """The truth about one emitted event."""

    kind: str  # one of KINDS
    event: dict | None  # as sent; None when the payload is not JSON
    reason: str | None = None  # INVALID: the error code the pipeline must give it

    @property
    def identity(self) -> tuple[str, str] | None:
        if not isinstance(self.event, dict):
            return None
        source, event_id = self.event.get("source"), self.event.get("id")
        return (source, event_id) if source and event_id else None


@dataclass(frozen=True)
class Message:
    """One Pub/Sub message: an event, a batch of events, or a malformed payload."""

    data: bytes
    emitted_ns: int  # the stream-clock slot at which the producer sends it
    labels: tuple[Label, ...]


@dataclass
class _Customer:
    subject: str
    offset_minutes: int
    users: int
    connections: int
    storage_gb: Decimal


@dataclass
class _Stream:
    """Mutable state of one generation run (the rng and what was already sent)."""

    config: SyntheticConfig
    rng: random.Random
    customers: list[_Customer]
    cum_weights: list[float]  # customers' Zipf weights, cumulated once
    sent: list[dict] = field(default_factory=list)  # first copies, for redelivery


def generate(config: SyntheticConfig) -> list[Message]:
    """The whole stream, in emission order."""
    rng = random.Random(config.seed)
    customers = [_customer(rng, k, config.max_users) for k in range(config.customers)]
    stream = _Stream(config, rng, customers,
                     list(itertools.accumulate(1 / (k + 1) for k in range(config.customers))))
    slots = [_slot(stream, i) for i in range(config.events)]
    return _pack(slots, config.batch_size)


def count_kinds(messages: list[Message]) -> Counter:
    """Events per kind, plus invalid events per error code (`invalid:CODE`)."""
    counts: Counter = Counter()
    for message in messages:
        for label in message.labels:
            counts[label.kind] += 1
            if label.reason:
                counts[f"invalid:{label.reason}"] += 1
    return counts


def _customer(rng: random.Random, index: int, max_users: int) -> _Customer:
    return _Customer(subject=f"cust-{index + 1:04d}", offset_minutes=rng.choice(OFFSETS_MINUTES),
                     users=rng.randint(5, max_users), connections=rng.randint(1, 200),
                     storage_gb=Decimal(rng.randint(1, 5000)))


def _slot(stream: _Stream, index: int) -> tuple[int, Label]:
    """What the producer sends in slot `index` of the stream clock."""
    config, rng = stream.config, stream.rng
    emitted_ns = config.start_ns + int(index * NS / config.rate)
    draw = rng.random()
    for kind, share in ((DUPLICATE, config.duplicate_fraction),
                        (INVALID, config.invalid_fraction),
                        (LATE, config.late_fraction),
                        (TOO_LATE, config.too_late_fraction)):
        if draw < share:
            break
        draw -= share
    else:
        kind = ON_TIME
    if kind == DUPLICATE and stream.sent:
        return emitted_ns, _redelivery(stream)
    if kind == INVALID:
        return emitted_ns, _invalid(stream, emitted_ns)
    kind = kind if kind in (LATE, TOO_LATE) else ON_TIME
    event = _event(stream, emitted_ns - _delay(stream, kind))
    stream.sent.append(event)
    return emitted_ns, Label(kind, event)


def _delay(stream: _Stream, kind: str) -> int:
    """How far behind the stream clock the event's time is (see module docstring)."""
    config, rng = stream.config, stream.rng
    if kind == LATE:  # its window has closed, but within allowed lateness
        return rng.randint(config.window_ns + MARGIN_NS, config.allowed_lateness_ns - MARGIN_NS)
    if kind == TOO_LATE:
        floor = config.window_ns + config.allowed_lateness_ns + MARGIN_NS
        return rng.randint(floor, floor + 24 * HOUR_NS)
    return 0


def _event(stream: _Stream, time_ns: int, event_type: str | None = None) -> dict:
    rng = stream.rng
    customer = rng.choices(stream.customers, cum_weights=stream.cum_weights)[0]
    event_type = event_type or rng.choices(
        stream.config.event_types, [TYPE_WEIGHTS[t] for t in stream.config.event_types])[0]
    return {"specversion": "1.0",
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "source": SOURCES[event_type].format(region=rng.choice(("eu", "us"))),
            "type": event_type,
            "subject": customer.subject,
            "time": _rfc3339(time_ns, customer.offset_minutes),
            "data": _data(rng, customer, event_type)}


def _rfc3339(time_ns: int, offset_minutes: int) -> str:
    """Milliseconds precision, in the customer's offset."""
    time_ns -= time_ns % 1_000_000
    if not offset_minutes:
        return format_time(time_ns)
    local = format_time(time_ns + offset_minutes * MINUTE_NS)[:-1]
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{local}{sign}{hours:02d}:{minutes:02d}"


def _data(rng: random.Random, customer: _Customer, event_type: str) -> dict:
    if event_type == "api.request":
        method = rng.choices(("GET", "POST", "PUT", "DELETE"), (60, 25, 10, 5))[0]
        return {"method": method,
                "path": rng.choice(("/v1/items", "/v1/items/{id}", "/v1/search", "/v1/users/{id}")),
                "status": rng.choices((200, 201, 204, 400, 404, 429, 500),
                                      (80, 6, 3, 4, 4, 2, 1))[0],
                "bytes_out": int(rng.lognormvariate(8, 1.2))}
    if event_type == "llm.completion":
        model = rng.choice(tuple(MODELS))
        input_tokens, output_tokens = rng.randint(20, 8000), rng.randint(1, 2000)
        price_in, price_out = MODELS[model]
        cost = (input_tokens * price_in + output_tokens * price_out) / 1_000_000
        return {"model": model, "input_tokens": input_tokens, "output_tokens": output_tokens,
                "cost_usd": str(cost.quantize(Decimal("0.000000001")))}
    if event_type == "user.active":
        return {"user_id": f"{customer.subject}-u{rng.randrange(customer.users):03d}"}
    if event_type == "connection.gauge":
        customer.connections = max(0, customer.connections + rng.randint(-10, 10))
        return {"connections": customer.connections}
    customer.storage_gb += Decimal(rng.randint(0, 2000)) / 1000
    return {"gb": str(customer.storage_gb)}


def _redelivery(stream: _Stream) -> Label:
    """A recent event again: identical (a redelivery) or, as a conflict, with other data."""
    original = stream.rng.choice(stream.sent[-DUPLICATE_LOOKBACK:])
    if stream.rng.random() >= stream.config.conflict_fraction:
        return Label(DUPLICATE, original)
    customer = next(c for c in stream.customers if c.subject == original["subject"])
    data = original["data"]
    while data == original["data"]:
        data = _data(stream.rng, customer, original["type"])
    return Label(CONFLICT, {**original, "data": data})


def _invalid(stream: _Stream, emitted_ns: int) -> Label:
    """An event the pipeline must dead-letter, and the error code it must give."""
    rng = stream.rng
    numeric_types = [t for t in stream.config.event_types if t in NUMERIC_FIELDS]
    reasons = [r for r in INVALID_REASONS if numeric_types or not r.startswith("VALUE_")]
    reason = rng.choice(reasons)
    if reason == "MALFORMED_JSON":
        return Label(INVALID, None, reason)
    event = _event(stream, emitted_ns, rng.choice(numeric_types) if numeric_types else None)
    if reason == "MISSING_ATTRIBUTE":
        del event[rng.choice(REQUIRED_ATTRIBUTES)]
    elif reason == "UNSUPPORTED_SPECVERSION":
        event["specversion"] = rng.choice(("0.3", "2.0"))
    elif reason == "BAD_TIME":
        event["time"] = format_time(emitted_ns - emitted_ns % NS)[:-1]  # no offset
    elif reason == "FUTURE_TIME":
        event["time"] = format_time(emitted_ns + rng.randint(HOUR_NS, 2 * HOUR_NS))
    else:
        name = rng.choice(NUMERIC_FIELDS[event["type"]])
        value = event["data"][name]
        if reason == "VALUE_NOT_NUMERIC":
            event["data"][name] = "many"
        else:  # keep the producer's JSON type; zero has no negative
            event["data"][name] = -(value or 1) if isinstance(value, int) else "-" + value
    return Label(INVALID, event, reason)


def _pack(slots: list[tuple[int, Label]], batch_size: int) -> list[Message]:
    """Group events into messages; a malformed payload always travels alone."""
    messages: list[Message] = []
    batch: list[tuple[int, Label]] = []
    for slot in slots:
        emitted_ns, label = slot
        if label.event is None:
            messages.append(Message(_malformed(emitted_ns), emitted_ns, (label,)))
            continue
        batch.append(slot)
        if len(batch) == batch_size:
            messages.append(_message(batch, batch_size))
            batch = []
    if batch:
        messages.append(_message(batch, batch_size))
    return messages


def _message(batch: list[tuple[int, Label]], batch_size: int) -> Message:
    events = [label.event for _, label in batch]
    payload = events[0] if batch_size == 1 else events
    return Message(_json(payload), batch[-1][0], tuple(label for _, label in batch))


def _malformed(emitted_ns: int) -> bytes:
    """A truncated event, as a crashing producer sends it (deterministic per slot)."""
    whole = _json({"specversion": "1.0", "id": f"truncated-{emitted_ns}",
                   "source": "//api.example.com/edge-eu", "type": "api.request"})
    return whole[: len(whole) * 2 // 3]


def _json(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
