"""The provider API key from Secret Manager (`--api-key-secret`), through the real
`tallyflow export` command: the official google-cloud-secret-manager client reads
the secret version from a local gRPC server following Secret Manager's published
API (tests/provider_servers/secret_manager.py), and the official Stripe SDK uses
the key against the local Stripe server (tests/provider_servers/stripe.py), which
accepts only that key. BigQuery is replaced by the in-memory ledger and a fixed
set of usage rows; everything else is the command as shipped.

The secret's value must never appear in what the command prints, in any log
record, in an error, in the ledger, or in the command line."""
import base64
import json
import logging
import time
from decimal import Decimal

import pytest

from pipelines.policy import BAD_ARGUMENTS, RUNTIME_FAILURE, SUCCESS
from schemas.values import format_time
from tallyflow import cli
from tallyflow.export import command
from tallyflow.export.ledger import FAILED, SENT, latest
from tallyflow.export.quantise import round_once
from tallyflow.export.usage import UsageRow
from tests.memory_ledger import MemoryLedger
from tests.provider_servers.secret_manager import DISABLED, SecretManagerServer
from tests.provider_servers.stripe import StripeServer

NS, HOUR = 1_000_000_000, 3600 * 1_000_000_000
NOW = time.time_ns()
START = NOW - NOW % HOUR - 24 * HOUR
END = START + 6 * HOUR
SECRET = "sk_test_from_secret_manager_7f3a9c"  # what the Stripe server accepts
VALUES = ["0.4", "0.4", "2.5", "7.25"]


@pytest.fixture
def world(tmp_path, monkeypatch, logs):
    """Stripe (accepting only SECRET), Secret Manager holding it, a mapping file, and
    the command's BigQuery reads and writes in memory."""
    stripe = StripeServer()
    stripe.api_key = SECRET
    base = stripe.start()
    from tallyflow.export.stripe import client

    sdk = client(SECRET, base)
    sdk.v1.billing.meters.create({"display_name": "API calls", "event_name": "api_calls"})
    customer = sdk.v1.customers.create({}).id
    stripe.calls.clear()  # from here on, only the command's calls
    mapping = tmp_path / "billing.yaml"
    mapping.write_text(json.dumps({"stripe": {"customers": {"acme": customer},
                                              "meters": {"calls": "api_calls"}}}))
    secrets = SecretManagerServer()
    address = secrets.start()
    monkeypatch.setattr(command, "secret_client", lambda: secrets.client(address))
    ledger = MemoryLedger()
    rows = [UsageRow("acme", "calls", "{}", START + h * HOUR, START + (h + 1) * HOUR,
                     Decimal(v), 1) for h, v in enumerate(VALUES)]
    monkeypatch.setattr("tallyflow.export.ledger.BigQueryLedger", lambda where: ledger)
    monkeypatch.setattr("tallyflow.export.usage.read_usage", lambda where, s, e: rows)
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_not_this_one")  # the secret wins
    world = type("World", (), {})()
    world.stripe, world.secrets, world.ledger, world.customer = stripe, secrets, ledger, customer
    world.argv = ["export", "--to", "stripe", "--period-start", format_time(START),
                  "--period-end", format_time(END), "--mapping", str(mapping),
                  "--api-base", base, "--bigquery_project", "tallyflow-test"]
    yield world
    secrets.stop()
    stripe.stop()


class Everything(logging.Handler):
    """Keeps every record, whole."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def logs():
    """Every log record at DEBUG, from the root and from the loggers that do not
    propagate to it (google-api-core turns `google`'s propagation off)."""
    handler, touched = Everything(), []
    for name in ("", "google", "stripe", "grpc", "urllib3", "httpx"):
        logger = logging.getLogger(name)
        touched.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    yield handler
    for logger, level in touched:
        logger.removeHandler(handler)
        logger.setLevel(level)


def records(logs) -> str:
    """Every record whole: its message and every attribute (a client library puts request
    and response payloads in a record's `extra`)."""
    assert logs.records  # the capture sees the libraries' records at all
    return "\n".join(json.dumps(vars(r), default=str) + r.getMessage() for r in logs.records)


def leaks(world, capsys, logs, argv, value=SECRET) -> list[str]:
    """Where `value` shows, as text or base64 (how JSON carries bytes): printed output,
    log records, the ledger, the command line."""
    out = capsys.readouterr()
    places = {"stdout": out.out, "stderr": out.err, "logs": records(logs),
              "ledger": json.dumps([e.row() for e in world.ledger.rows], default=str),
              "argv": " ".join(argv)}
    forms = (value, base64.b64encode(value.encode()).decode()[:-4])
    return [place for place, text in places.items() if any(f in text for f in forms)]


def test_the_key_comes_from_secret_manager_and_shows_nowhere(world, capsys, logs):
    name = world.secrets.add_version("billing", "stripe-key", SECRET.encode() + b"\n")
    argv = [*world.argv, "--api-key-secret", name]
    assert cli.main(argv) == SUCCESS
    assert world.secrets.accessed == [name]
    exact = sum((Decimal(v) for v in VALUES), Decimal(0))
    assert world.stripe.total("api_calls", world.customer, START // NS, END // NS) == \
        round_once(exact)  # Stripe took the events: it accepts no other key
    assert {e.status for e in latest(world.ledger.rows).values()} == {SENT}
    assert leaks(world, capsys, logs, argv) == []


def test_latest_resolves_to_the_newest_version(world, capsys, logs):
    world.secrets.add_version("billing", "stripe-key", b"sk_test_rotated_out")
    world.secrets.add_version("billing", "stripe-key", SECRET.encode())
    argv = [*world.argv, "--api-key-secret", "projects/billing/secrets/stripe-key/versions/latest"]
    assert cli.main(argv) == SUCCESS
    assert leaks(world, capsys, logs, argv) == []
    assert leaks(world, capsys, logs, argv, "sk_test_rotated_out") == []


def test_a_key_the_provider_refuses_fails_its_rows_without_showing_the_key(world, capsys,
                                                                            logs):
    wrong = "sk_test_wrong_but_secret_41d2"
    name = world.secrets.add_version("billing", "stripe-key", wrong.encode())
    argv = [*world.argv, "--api-key-secret", name]
    assert cli.main(argv) == 1
    failed = [e for e in latest(world.ledger.rows).values() if e.status == FAILED]
    assert failed and all(e.response.startswith("401") for e in failed)
    assert leaks(world, capsys, logs, argv, wrong) == []


@pytest.mark.parametrize("setup,code,says", [
    (lambda s: "projects/billing/secrets/nothing/versions/1", RUNTIME_FAILURE, "NotFound"),
    (lambda s: s.add_version("billing", "k", SECRET.encode(), DISABLED), RUNTIME_FAILURE,
     "FailedPrecondition"),
    (lambda s: "billing/stripe-key", BAD_ARGUMENTS, "projects/P/secrets/S/versions/V"),
])
def test_an_unreadable_secret_stops_before_any_call_and_names_the_secret(
        world, capsys, logs, setup, code, says):
    world.secrets.add_version("billing", "other", SECRET.encode())
    name = setup(world.secrets)
    argv = [*world.argv, "--api-key-secret", name]
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert says in err and name.split("/versions/")[0] in err
    assert len(err.strip().splitlines()) == 1
    assert world.stripe.calls == [] and world.ledger.rows == []
    assert SECRET not in err and SECRET not in records(logs)


def test_a_payload_failing_its_checksum_is_refused(world, capsys, logs):
    name = world.secrets.add_version("billing", "stripe-key", SECRET.encode())
    world.secrets.corrupt = True
    assert cli.main([*world.argv, "--api-key-secret", name]) == RUNTIME_FAILURE
    err = capsys.readouterr().err
    assert "CRC32C" in err and SECRET not in err
    assert world.stripe.calls == []
