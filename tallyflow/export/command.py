"""`tallyflow export --to stripe|orb|lago`: a closed period's exact usage, sent to a
billing provider exactly once (docs/export.md).

It reads the `usage` view for the period, compares it with the `exports`
ledger and sends only what the provider does not hold yet: new windows,
restated windows (as the provider's correction), and requests a crashed run
left pending (resent under the same idempotency key). Credentials come from
the environment (STRIPE_API_KEY, ORB_API_KEY, LAGO_API_KEY) or from a Secret
Manager secret version (--api-key-secret), never from a flag value. Exit 1
when some request was rejected (see `exports` for the row and the reason).

A command and not a Beam pipeline: the work is bounded by the providers'
rate limits (Stripe: about 1,000 calls/s), not by compute; one process with
a few concurrent series saturates them.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import time
import uuid

from pipelines.options import add_table_arguments
from pipelines.policy import DIFFERENCE, SUCCESS, CommandFailed, run_command
from schemas.values import NS, format_time, parse_rfc3339
from tallyflow.export.mapping import PROVIDERS, load_mapping
from transforms.bigquery_target import BigQueryTarget

# provider -> module with NAME, API_KEY_ENV, SDK, DEFAULT_API_BASE and build(api_key, api_base)
MODULES = {name: f"tallyflow.export.{name}" for name in PROVIDERS}
SECRET_MANAGER = "google.cloud.secretmanager"


def require(module: str) -> None:
    """Imports a library of the `export` extra now, so an install without the extra
    (or with one of its dependencies missing) is a one-line usage error, not a
    traceback from the middle of a run."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as missing:
        raise ValueError(f"{module} is not installed (no module named {missing.name!r}): "
                         f"install the export extra, pip install 'tallyflow[export]'") from None


def provider_module(name: str):
    module = importlib.import_module(MODULES[name])
    require(module.SDK)
    return module


SECRET_VERSION = re.compile(r"projects/[^/]+/secrets/[^/]+/versions/[^/]+")


# The client's transports log every response, payload included, at DEBUG (on with
# GOOGLE_SDK_PYTHON_LOGGING_SCOPE or any DEBUG logging setup): held at INFO.
_SECRET_LOGGERS = [f"google.cloud.secretmanager_v1.services.secret_manager_service.transports."
                   f"{transport}" for transport in ("grpc", "grpc_asyncio", "rest")]


def secret_client():
    """Secret Manager's official client, with the environment's Google credentials."""
    from google.cloud import secretmanager

    return secretmanager.SecretManagerServiceClient()


def read_secret(name: str) -> str:
    """A secret version's payload (AccessSecretVersion), checked against the CRC32C
    Secret Manager sends with it. No message or log record, here or in the client,
    carries the payload."""
    import google_crc32c

    client = secret_client()
    for logger in _SECRET_LOGGERS:
        logging.getLogger(logger).setLevel(logging.INFO)
    payload = client.access_secret_version(name=name).payload
    if payload.data_crc32c and google_crc32c.value(payload.data) != payload.data_crc32c:
        raise CommandFailed(f"the payload of secret {name} failed its CRC32C check")
    return payload.data.decode().strip()


def api_key(module, secret: str | None) -> str:
    """The provider's API key: a Secret Manager secret version, else its environment
    variable. Never a flag value, never printed."""
    if secret:
        if not SECRET_VERSION.fullmatch(secret):
            raise ValueError(f"--api-key-secret must name a secret version, "
                             f"projects/P/secrets/S/versions/V (or .../versions/latest), "
                             f"got {secret!r}")
        require(SECRET_MANAGER)
        return read_secret(secret)
    key = os.environ.get(module.API_KEY_ENV)
    if not key:
        raise ValueError(f"set {module.API_KEY_ENV} (or --api-key-secret) to the "
                         f"{module.NAME} API key")
    return key


def add_provider_arguments(parser, option: str) -> None:
    """The options `export` and `reconcile --provider` share."""
    parser.add_argument(option, dest="provider", required=True, choices=PROVIDERS,
                        help="The billing provider.")
    parser.add_argument("--period-start", "--period_start", dest="period_start", required=True,
                        help="Start of the closed period (RFC 3339, inclusive).")
    parser.add_argument("--period-end", "--period_end", dest="period_end", required=True,
                        help="End of the closed period (RFC 3339, exclusive; in the past).")
    parser.add_argument("--mapping", help="YAML file mapping subjects and meters to the "
                                          "provider's customers and meters "
                                          "(tallyflow.export.mapping); default: same names.")
    parser.add_argument("--api-base", "--api_base", dest="api_base",
                        help="The provider's API base URL (default: its public API).")
    parser.add_argument("--api-key-secret", "--api_key_secret", dest="api_key_secret",
                        help="Secret Manager secret version holding the API key "
                             "(projects/P/secrets/S/versions/V); default: the environment.")
    add_table_arguments(parser)


def period(args) -> tuple[int, int]:
    start, end = parse_rfc3339(args.period_start), parse_rfc3339(args.period_end)
    if start % NS or end % NS:
        raise ValueError("the period's bounds must be whole seconds (providers take seconds)")
    if end <= start:
        raise ValueError("--period-end must be after --period-start")
    if end > time.time_ns():
        raise ValueError(f"the period ends {format_time(end)}, in the future: only closed "
                         f"periods are exported")
    return start, end


def target(args) -> BigQueryTarget:
    if not args.project:
        raise ValueError("--bigquery_project (or GOOGLE_CLOUD_PROJECT) is required")
    return BigQueryTarget(args.project, args.dataset, args.endpoint or None)


def run_id(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def prepare(args, kind: str):
    """-> (provider, BigQuery target, run context) from the shared options, checked
    before anything is read or sent."""
    from tallyflow.export.engine import Context

    module = provider_module(args.provider)
    start, end = period(args)
    options = {}
    if getattr(args, "stripe_api", None):
        if args.provider != "stripe":
            raise ValueError("--stripe-api applies to --to stripe only")
        options["stripe_api"] = args.stripe_api
    provider = module.build(api_key(module, args.api_key_secret), args.api_base, **options)
    context = Context(run_id(kind), time.time_ns(), start, end,
                      load_mapping(args.mapping, args.provider))
    return provider, target(args), context


def _parser() -> argparse.ArgumentParser:
    from tallyflow.export.stripe import APIS, STREAM_FROM

    parser = argparse.ArgumentParser(prog="tallyflow export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_provider_arguments(parser, "--to")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="Customer x meter series sent in parallel (each in order).")
    parser.add_argument("--calls-per-second", "--calls_per_second", dest="calls_per_second",
                        type=float, default=100.0,
                        help="Most provider calls started per second (Stripe live mode "
                             "allows about 1,000).")
    parser.add_argument("--stripe-api", "--stripe_api", dest="stripe_api",
                        choices=APIS,
                        help=f"Stripe meter events one call each (v1) or on the v2 meter "
                             f"event stream, 100 a call (v2); default auto: v2 from "
                             f"{STREAM_FROM:,} events in a run (docs/export.md).")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command("tallyflow export", lambda: _export(args))


def _export(args) -> int:
    from tallyflow.export.engine import export
    from tallyflow.export.ledger import BigQueryLedger
    from tallyflow.export.retry import RetryPolicy
    from tallyflow.export.usage import read_usage

    provider, where, context = prepare(args, "export")
    start, end = context.period_start, context.period_end
    rows = read_usage(where, start, end)
    print(f"export {context.run_id} to {args.provider}: {format_time(start)} .. "
          f"{format_time(end)}, {len(rows)} usage rows", flush=True)
    report = export(provider, rows, BigQueryLedger(where), context, RetryPolicy(),
                    args.concurrency, args.calls_per_second,
                    progress=lambda text: print(f"  {text}", flush=True))
    for status, count in sorted(report.counts.items()):
        print(f"  {status:<8} {count}")
    if not report.clean:
        print("  some requests failed: see the exports table (status failed) for each reason")
    return SUCCESS if report.clean else DIFFERENCE


if __name__ == "__main__":
    sys.exit(main())
