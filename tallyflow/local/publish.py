"""`tallyflow publish`: send usage events to the Pub/Sub topic of the local stack.

Input is a JSONL file (each line one message: an event, or a JSON array of
events, the CloudEvents batch format), or a seeded synthetic stream
(`tallyflow/local/synthetic.py`). Every message gets the timestamp attribute the
pipeline reads (`--timestamp-attribute`, default `ce-time`): the earliest
`time` in the message, floored to the millisecond, so the watermark never
overtakes an event of the message. A message whose time cannot be read is sent
without it: Beam would fail on a bad attribute and redeliver the message
forever, while without one it falls back to publish time and the pipeline
dead-letters the event on its own terms. Lines are sent as they are, malformed
or not: judging them is the pipeline's job.

With `--compress gzip|zstd`, each message's data is compressed and marked by
the `content-encoding` attribute, which the stream decodes.

With `--binary`, each event goes in CloudEvents binary content mode instead
(`binary_form`): its attributes as `ce-` Pub/Sub attributes, its datacontenttype
as `content-type`, its data as the message. A line without a binary form (not
an event object, or an attribute no Pub/Sub attribute can carry) is sent as it is.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from tallyflow.local import stack as local_stack
from pipelines.policy import name_option, run_command
from tallyflow.local.stack import StackError
from tallyflow.local.synthetic import KINDS, Message, SyntheticConfig, count_kinds, generate
from schemas import names
from schemas.encoding import CONTENT_ENCODING, ENCODINGS, compress
from schemas.events import ATTRIBUTE_VALUE_BYTES, is_json_content_type
from schemas.values import (NS, dumps_exact, format_time, loads_exact, parse_duration,
                            parse_rfc3339, parse_window)

DEFAULT_TIMESTAMP_ATTRIBUTE = "ce-time"


@dataclass(frozen=True)
class Outgoing:
    """One message to publish; `at_ns` paces `--realtime` (None: send at once)."""

    data: bytes
    events: int
    time: str | None  # the timestamp attribute's value
    at_ns: int | None = None
    attributes: dict = field(default_factory=dict)  # binary mode's ce-* and content-type

    @classmethod
    def of(cls, data: bytes, at_ns: int | None = None) -> "Outgoing":
        try:
            document = json.loads(data)
        except ValueError:  # sent anyway: the pipeline dead-letters it
            return cls(data, 1, None, at_ns)
        events = document if isinstance(document, list) else [document]
        return cls(data, len(events), earliest_time(events), at_ns)

    def in_binary_mode(self) -> list["Outgoing"]:
        """This message as binary-mode messages, one per event; itself where it has none."""
        try:
            document = loads_exact(self.data)
        except (ValueError, RecursionError):
            return [self]
        events = document if isinstance(document, list) else [document]
        forms = [binary_form(event) for event in events]
        if not events or None in forms:
            return [self]
        return [Outgoing(data, 1, earliest_time([event]), self.at_ns, attributes)
                for event, (attributes, data) in zip(events, forms)]


    def compressed(self, encoding: str) -> "Outgoing":
        """This message with its data compressed, marked by a content-encoding attribute."""
        return replace(self, data=compress(self.data, encoding),
                       attributes={**self.attributes, CONTENT_ENCODING: encoding})


def binary_form(event) -> tuple[dict[str, str], bytes] | None:
    """An event object as a binary-mode message (CloudEvents Pub/Sub protocol binding):
    (attributes, data), or None when it has none: not an object, an attribute that is
    not a string, integer or boolean (the types with a canonical string), a value
    longer than Pub/Sub allows, or data_base64 that is not base64."""
    if not isinstance(event, dict):
        return None
    attributes = {}
    for name, value in event.items():
        if name in ("data", "data_base64") or value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int):
            value = str(value)
        elif not isinstance(value, str):
            return None
        try:
            if len(value.encode("utf-8")) > ATTRIBUTE_VALUE_BYTES:
                return None
        except UnicodeEncodeError:  # a lone surrogate: no Pub/Sub attribute holds it
            return None
        attributes["content-type" if name == "datacontenttype" else f"ce-{name}"] = value
    content_type = attributes.get("content-type", "application/json")
    if event.get("data_base64") is not None:
        try:
            data = base64.b64decode(event["data_base64"], validate=True)
        except (TypeError, ValueError):
            return None
    elif event.get("data") is None:
        data = b""
    elif isinstance(event["data"], str) and not is_json_content_type(content_type):
        data = event["data"].encode("utf-8", "surrogatepass")
    else:
        data = dumps_exact(event["data"]).encode("utf-8", "surrogatepass")
    if data and "content-type" not in attributes:
        attributes["content-type"] = content_type
    return attributes, data


def earliest_time(events: list) -> str | None:
    """The earliest readable `time` of the events (RFC 3339 UTC, ms), or None."""
    times = []
    for event in events:
        try:
            times.append(parse_rfc3339(event.get("time") if isinstance(event, dict) else None))
        except ValueError:
            continue
    if not times:
        return None
    earliest = min(times)
    return format_time(earliest - earliest % 1_000_000)


def read_jsonl(path: Path) -> list[Outgoing]:
    """One message per non-blank line, bytes exactly as in the file (minus the newline)."""
    messages = []
    with path.open("rb") as lines:
        for line in lines:
            data = line.rstrip(b"\r\n")
            if data.strip():
                messages.append(Outgoing.of(data))
    return messages


def synthetic_messages(config: SyntheticConfig) -> tuple[list[Message], list[Outgoing]]:
    messages = generate(config)
    return messages, [Outgoing.of(m.data, m.emitted_ns) for m in messages]


def publish(publisher, topic_path: str, messages: list[Outgoing], attribute: str,
            progress: "Progress") -> list[str]:
    """Publish in order (paced where `at_ns` is set); returns the Pub/Sub message ids."""
    futures = []
    started, first_ns = time.monotonic(), next(
        (m.at_ns for m in messages if m.at_ns is not None), None)
    for message in messages:
        if message.at_ns is not None:
            delay = started + (message.at_ns - first_ns) / NS - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        attributes = dict(message.attributes)
        if message.time:  # a binary event's own ce-time stays as it is
            attributes.setdefault(attribute, message.time)
        futures.append(publisher.publish(topic_path, message.data, **attributes))
        progress.update(len(futures))
    ids = [future.result(timeout=60) for future in futures]
    progress.close()
    return ids


class Progress:
    """A carriage-return progress line on a terminal, a line every few seconds in logs."""

    def __init__(self, total: int, what: str, stream=sys.stderr):
        self.total, self.what, self.stream = total, what, stream
        self.started = self.shown = time.monotonic()
        self.tty = stream.isatty()
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self.shown >= (0.1 if self.tty else 5.0) or done == self.total:
            self.shown = now
            self._show()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _show(self) -> None:
        percent = 100 * self.done / self.total if self.total else 100
        rate = self.done / max(time.monotonic() - self.started, 1e-9)
        text = f"{self.what} {self.done}/{self.total} ({percent:.0f} %, {rate:.0f}/s)"
        self.stream.write(f"\r{text}" if self.tty else text + "\n")
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.file) == bool(args.synthetic):
        parser.error("give a JSONL FILE or --synthetic (not both)")
    if args.binary and args.synthetic and args.batch_size != 1:
        parser.error("--binary sends one event per message: --batch-size must be 1")
    try:
        config = _synthetic_config(args) if args.synthetic else None
    except ValueError as error:
        parser.error(str(error))
    return run_command("tallyflow publish", lambda: _run(args, config))


def _run(args, config: SyntheticConfig | None) -> int:
    host, project = _target(args)
    labelled: list[Message] = []
    if config:
        labelled, messages = synthetic_messages(config)
        if not args.realtime:
            messages = [replace(m, at_ns=None) for m in messages]
    else:
        messages = _read_file(Path(args.file))
    if args.binary:
        messages = [binary for message in messages for binary in message.in_binary_mode()]
    if args.compress:
        messages = [message.compressed(args.compress) for message in messages]
    publisher = local_stack.publisher_client(host, publisher_options=_flow_control())
    topic_path = publisher.topic_path(project, args.topic)
    _check_topic(publisher, topic_path, host)
    started = time.monotonic()
    ids = publish(publisher, topic_path, messages, args.timestamp_attribute,
                  Progress(len(messages), "published messages"))
    elapsed = time.monotonic() - started
    if args.labels:
        _write_labels(Path(args.labels), labelled, ids)
    print(_summary(messages, labelled, topic_path, elapsed, args.timestamp_attribute))
    return 0


def _target(args) -> tuple[str, str]:
    """The emulator to publish to: the run dir's stack, else PUBSUB_EMULATOR_HOST."""
    if (Path(args.run_dir) / local_stack.STATE_FILE).exists():
        stack = local_stack.connect(args.run_dir)
        return stack.pubsub_host, args.project or stack.project
    if os.environ.get("PUBSUB_EMULATOR_HOST"):
        return os.environ["PUBSUB_EMULATOR_HOST"], (
            args.project or os.environ.get("GOOGLE_CLOUD_PROJECT") or local_stack.DEFAULT_PROJECT)
    raise StackError(f"no local stack in {Path(args.run_dir).resolve()} and PUBSUB_EMULATOR_HOST "
                     "is not set (run `tallyflow local up`)")


def _flow_control():
    from google.cloud.pubsub_v1 import types

    # Bounded memory for large streams: block instead of buffering everything.
    return types.PublisherOptions(flow_control=types.PublishFlowControl(
        message_limit=10_000, limit_exceeded_behavior=types.LimitExceededBehavior.BLOCK))


def _check_topic(publisher, topic_path: str, host: str) -> None:
    """Fail in seconds with a reason, rather than letting publish retry for a minute."""
    from google.api_core import exceptions

    try:
        publisher.get_topic(topic=topic_path, retry=None, timeout=5)
    except exceptions.NotFound:
        raise StackError(f"topic {topic_path} does not exist on the emulator at {host} "
                         "(run `tallyflow local up` with that --topic)") from None
    except exceptions.GoogleAPICallError as error:
        raise StackError(f"the Pub/Sub emulator at {host} does not answer: "
                         f"{' '.join(str(error).split())[:200]}") from None


def _read_file(path: Path) -> list[Outgoing]:
    try:
        return read_jsonl(path)
    except OSError as error:
        raise StackError(f"cannot read {path}: {error.strerror}") from None


def _write_labels(path: Path, messages: list[Message], ids: list[str]) -> None:
    """Ground truth per event, one JSON line each, keyed by the Pub/Sub message id."""
    with path.open("w") as out:
        for message, message_id in zip(messages, ids):
            for label in message.labels:
                out.write(json.dumps({"message_id": message_id, "kind": label.kind,
                                      "reason": label.reason, "event": label.event}) + "\n")


def _summary(messages: list[Outgoing], labelled: list[Message], topic_path: str,
             elapsed: float, attribute: str) -> str:
    events = sum(m.events for m in messages)
    size = sum(len(m.data) for m in messages)
    unstamped = sum(1 for m in messages if m.time is None)
    lines = [f"published {len(messages)} messages ({events} events, {size / 1e6:.2f} MB) to "
             f"{topic_path} in {elapsed:.1f} s ({len(messages) / max(elapsed, 1e-9):.0f} "
             "messages/s)"]
    if unstamped:
        lines.append(f"  {unstamped} messages without a {attribute} attribute (no readable time)")
    if labelled:
        counts = count_kinds(labelled)
        lines.append("  events: " + ", ".join(f"{kind} {counts[kind]}" for kind in KINDS
                                                if counts[kind]))
        reasons = Counter({k.split(":", 1)[1]: v for k, v in counts.items()
                           if k.startswith("invalid:")})
        if reasons:
            lines.append("  invalid: " + ", ".join(f"{code} {n}" for code, n in
                                                   sorted(reasons.items())))
    return "\n".join(lines)


def _synthetic_config(args) -> SyntheticConfig:
    if args.start:
        start_ns = parse_rfc3339(args.start)
    else:  # realtime starts now; otherwise the stream ends now, so nothing is in the future
        now_ns = time.time_ns()
        span_ns = 0 if args.realtime else int(max(args.events - 1, 0) * NS / args.rate)
        start_ns = now_ns - span_ns
    return SyntheticConfig(
        seed=args.seed, customers=args.customers, events=args.events, rate=args.rate,
        start_ns=start_ns, batch_size=args.batch_size,
        duplicate_fraction=args.duplicate_fraction, conflict_fraction=args.conflict_fraction,
        late_fraction=args.late_fraction, too_late_fraction=args.too_late_fraction,
        invalid_fraction=args.invalid_fraction, window_ns=parse_window(args.window),
        allowed_lateness_ns=parse_duration(args.allowed_lateness),
        event_types=tuple(args.event_types.split(",")))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tallyflow publish",
        description="Publish usage events (a JSONL file or a seeded synthetic stream) to the "
                    "local stack's Pub/Sub topic, with the pipeline's timestamp attribute.")
    parser.add_argument("file", nargs="?", metavar="FILE",
                        help="JSONL: one message per line, an event or a JSON array of events")
    target = parser.add_argument_group("where to")
    target.add_argument("--run-dir", default=os.environ.get("TALLYFLOW_RUN_DIR",
                                                            local_stack.DEFAULT_RUN_DIR),
                        help="the local stack's run dir (env TALLYFLOW_RUN_DIR; default "
                             "%(default)s); without one, PUBSUB_EMULATOR_HOST is used")
    target.add_argument("--project", type=name_option(names.bigquery_project),
                        help="default: the stack's project, else "
                        f"GOOGLE_CLOUD_PROJECT, else {local_stack.DEFAULT_PROJECT}")
    target.add_argument("--topic", default=local_stack.DEFAULT_TOPIC, help="default %(default)s",
                        type=name_option(names.pubsub_id))
    target.add_argument("--timestamp-attribute", default=DEFAULT_TIMESTAMP_ATTRIBUTE,
                        help="attribute carrying the earliest event time of each message "
                             "(default %(default)s; match the pipeline's option)")
    parser.add_argument("--binary", action="store_true",
                        help="send each event in CloudEvents binary content mode: attributes "
                             "as ce-* Pub/Sub attributes, datacontenttype as content-type, "
                             "data as the message (a batch line becomes one message per "
                             "event; a line with no binary form is sent as it is)")
    parser.add_argument("--compress", choices=ENCODINGS,
                        help="compress each message's data, marked by the Pub/Sub attribute "
                             "content-encoding (docs/cloudevents.md); worth it for batches "
                             "(--batch-size 100: about a fifth of the bytes Pub/Sub bills)")
    synthetic = parser.add_argument_group("synthetic stream")
    synthetic.add_argument("--synthetic", action="store_true",
                           help="publish a generated stream instead of a file")
    synthetic.add_argument("--seed", type=int, default=0, help="default %(default)s")
    synthetic.add_argument("--customers", type=int, default=10, help="default %(default)s")
    synthetic.add_argument("--events", type=int, default=1000,
                           help="events to generate, duplicates and invalid ones included "
                                "(default %(default)s)")
    synthetic.add_argument("--rate", type=float, default=10.0,
                           help="events per second of event time (default %(default)s)")
    synthetic.add_argument("--start", help="RFC 3339 time of the first event (default: now "
                           "with --realtime, else so that the stream ends now)")
    synthetic.add_argument("--realtime", action="store_true",
                           help="publish each message at its slot of the event clock, so a "
                                "wall-clock watermark (the DirectRunner's) sees on-time events "
                                "on time")
    synthetic.add_argument("--batch-size", type=int, default=1,
                           help="events per message; > 1 sends CloudEvents batches (JSON "
                                "arrays) (default %(default)s)")
    for name, text in (("duplicate", "redeliveries of an earlier event"),
                       ("conflict", "share of the duplicates whose payload differs"),
                       ("late", "events past their window's end, within allowed lateness"),
                       ("too-late", "events past allowed lateness"),
                       ("invalid", "events the pipeline must dead-letter")):
        synthetic.add_argument(f"--{name}-fraction", type=float, default=0.0,
                               help=f"{text} (default 0)")
    synthetic.add_argument("--window", default="1h",
                           help="window size lateness is judged by (default %(default)s)")
    synthetic.add_argument("--allowed-lateness", default="48h", help="default %(default)s")
    synthetic.add_argument("--event-types", default=",".join(SyntheticConfig().event_types),
                           help="comma-separated CloudEvents types (default: all of "
                                "tallyflow/examples/meters.yaml)")
    synthetic.add_argument("--labels", metavar="FILE",
                           help="write the ground truth per event (JSONL, with message ids)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
