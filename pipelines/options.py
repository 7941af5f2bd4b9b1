"""Options every pipeline shares: where the BigQuery tables live, and help output."""
from __future__ import annotations

import argparse
import os

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipelines.policy import name_option
from schemas import names
from schemas.catalog import CatalogError, MeterCatalog, parse_catalog_text
from schemas.limits import LimitBook, LimitsError, parse_limits_text
from schemas.pricing import PriceBook, PriceBookError, parse_price_book_text
from schemas.values import parse_rfc3339
from transforms.bigquery_target import BigQueryTarget
from transforms.storage_read import STORAGE_EMULATOR_ENV


def read_config_text(path: str, error: type[ValueError]) -> str:
    """A configuration file's text, from a local path or gs:// (a Flex Template reads
    it from GCS); one that cannot be read is bad configuration: `error`, naming it."""
    try:
        with FileSystems.open(path) as f:
            return f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        text = str(e).strip().splitlines()
        raise error(f"cannot read {path}: {text[0] if text else type(e).__name__}") from None


def load_catalog_anywhere(path: str) -> MeterCatalog:
    return parse_catalog_text(read_config_text(path, CatalogError), path)


def load_price_book_anywhere(path: str) -> PriceBook:
    return parse_price_book_text(read_config_text(path, PriceBookError), path)


def load_limits_anywhere(path: str, catalog: MeterCatalog, prices: PriceBook) -> LimitBook:
    return parse_limits_text(read_config_text(path, LimitsError), catalog, prices, path)


def add_price_book(parser, purpose: str = "") -> None:
    """`--prices`, for each pipeline that reads the price book (defined once)."""
    parser.add_argument("--prices", help=f"Price book YAML file (local path or gs://){purpose}.")


class UsageOptions(PipelineOptions):
    """Flags every tallyflow pipeline shares, defined once.

    Beam parses the flags of every PipelineOptions class in the process with
    one parser, so a flag two pipelines defined separately would clash; each
    pipeline's options class derives from this one and adds only its own.
    """

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--meters", help="Meter catalog YAML file (local path or gs://).")
        parser.add_argument("--window", default="1h",
                            help="Fixed event-time window size, aligned to UTC days: whole "
                                 "seconds that divide a day (1m, 5m, 15m, 1h, 6h, 1d ...).")
        parser.add_argument("--max_future_skew", "--max-future-skew", dest="max_future_skew",
                            default="5m",
                            help="Reject events whose time is further ahead of ingest than this.")
        parser.add_argument("--bigquery_project", type=name_option(names.bigquery_project),
                            help="Project of the BigQuery dataset (default: --project, or "
                                 "GOOGLE_CLOUD_PROJECT).")
        parser.add_argument("--bigquery_dataset", default="metering",
                            type=name_option(names.bigquery_dataset),
                            help="BigQuery dataset holding the tallyflow tables.")
        parser.add_argument("--bigquery_endpoint",
                            default=os.environ.get("BIGQUERY_EMULATOR_HOST"),
                            help="BigQuery API endpoint, for a local emulator "
                                 "(default: BIGQUERY_EMULATOR_HOST; empty: real BigQuery).")
        parser.add_argument("--bigquery_storage_endpoint",
                            default=os.environ.get(STORAGE_EMULATOR_ENV),
                            help="The emulator's BigQuery Storage API gRPC host:port "
                                 f"(default: {STORAGE_EMULATOR_ENV}; empty: real BigQuery).")


def parse_bool(text) -> bool:
    """true/false for on/off options that must also take `--name=value` (template launches)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_switch(parser, name: str, help: str) -> None:
    """An on/off option: `--name` alone, or `--name=true|false`."""
    parser.add_argument(name, type=parse_bool, nargs="?", const=True, default=False,
                        choices=(False, True), help=help)


def add_table_arguments(parser) -> None:
    """Where the tables live, for commands that query BigQuery without a Beam pipeline."""
    parser.add_argument("--bigquery_project", "--project", dest="project",
                        default=os.environ.get("GOOGLE_CLOUD_PROJECT"),
                        type=name_option(names.bigquery_project),
                        help="Project of the dataset (default: GOOGLE_CLOUD_PROJECT).")
    parser.add_argument("--bigquery_dataset", "--dataset", dest="dataset", default="metering",
                        type=name_option(names.bigquery_dataset),
                        help="Dataset holding the tallyflow tables.")
    parser.add_argument("--bigquery_endpoint", dest="endpoint",
                        default=os.environ.get("BIGQUERY_EMULATOR_HOST"),
                        help="BigQuery API endpoint of an emulator "
                             "(default: BIGQUERY_EMULATOR_HOST; empty: real BigQuery).")


def own_and_shared_arguments(options_class, parser) -> None:
    """Adds the flags of `options_class` and of the classes it derives from."""
    for cls in reversed(options_class.mro()):
        if cls is not PipelineOptions and "_add_argparse_args" in vars(cls):
            cls._add_argparse_args(parser)


def table_target(args) -> BigQueryTarget:
    """The dataset named by the arguments of `add_table_arguments`."""
    if not args.project:
        raise ValueError("--bigquery_project (or GOOGLE_CLOUD_PROJECT) is required")
    return BigQueryTarget(args.project, args.dataset, args.endpoint or None)


def add_period_arguments(parser) -> None:
    """--period-start and --period-end, for commands that take a period (`parse_period`)."""
    parser.add_argument("--period-start", "--period_start", dest="period_start", required=True,
                        help="Start of the period (RFC 3339, inclusive).")
    parser.add_argument("--period-end", "--period_end", dest="period_end", required=True,
                        help="End of the period (RFC 3339, exclusive).")


def parse_period(start: str, end: str) -> tuple[int, int]:
    """A period [start, end) in ns from its RFC 3339 arguments; start must be before end."""
    start_ns, end_ns = parse_rfc3339(start), parse_rfc3339(end)
    if start_ns >= end_ns:
        raise ValueError("--period-start must be before --period-end")
    return start_ns, end_ns


def bigquery_target(options) -> BigQueryTarget:
    """The dataset named by the BigQuery arguments of `options` (any options view)."""
    project = (options.bigquery_project
               or options.view_as(GoogleCloudOptions).project
               or os.environ.get("GOOGLE_CLOUD_PROJECT"))
    if not project:
        raise ValueError("--bigquery_project (or --project / GOOGLE_CLOUD_PROJECT) is required")
    return BigQueryTarget(project, options.bigquery_dataset, options.bigquery_endpoint or None,
                          storage_endpoint=options.bigquery_storage_endpoint or None)


def print_help(prog: str, description: str, options_class) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    own_and_shared_arguments(options_class, parser)
    parser.epilog = "Any Beam pipeline option (--runner, --project, ...) also applies."
    parser.print_help()
