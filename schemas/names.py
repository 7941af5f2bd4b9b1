"""Google Cloud resource names an operator gives tallyflow: the rules, defined once.

Project, dataset and table names end up inside SQL between backticks and in
API paths, so a name is checked against the service's own naming rules before
anything is built from it: a dataset like ``m.x` UNION ALL SELECT ... `` is
refused, not pasted into a query. The option parsers, `BigQueryTarget` and the
template metadata all use these definitions. So do the ids tallyflow gives its own
runs (`new_run_id`), which name staging tables and jobs.
"""
from __future__ import annotations

import re
import time
import unicodedata
import uuid

# BigQuery project ids: 6-30 lowercase letters, digits and hyphens, starting with a
# letter and not ending with a hyphen; legacy domain-scoped ids carry "domain:".
PROJECT = r"^([a-z][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$"
# BigQuery dataset names: letters, digits and underscores, at most 1,024.
DATASET = r"^[A-Za-z0-9_]{1,1024}$"
# Pub/Sub topic and subscription ids: 3-255 characters from this set, starting with a
# letter, not with "goog".
_PUBSUB_ID = r"(?!goog)[A-Za-z][-A-Za-z0-9_.~+%]{2,254}"
_PUBSUB_PROJECT = PROJECT[1:-1]
SUBSCRIPTION = rf"^projects/{_PUBSUB_PROJECT}/subscriptions/{_PUBSUB_ID}$"
TOPIC = rf"^projects/{_PUBSUB_PROJECT}/topics/{_PUBSUB_ID}$"
# BigQuery table names: Unicode letters, marks, numbers, connectors (such as _),
# dashes and spaces; at most 1,024 bytes of UTF-8.
_TABLE_CATEGORIES = ("Pc", "Pd", "Zs")


class InvalidName(ValueError):
    """A resource name that breaks its service's naming rules."""


def _checked(kind: str, text, pattern: str, rule: str) -> str:
    if not isinstance(text, str) or not re.fullmatch(pattern, text, flags=re.ASCII):
        raise InvalidName(f"invalid {kind} {text!r}: {rule}")
    return text


def bigquery_project(text) -> str:
    return _checked("BigQuery project", text, PROJECT,
                    "6-30 lowercase letters, digits or hyphens, starting with a letter")


def bigquery_dataset(text) -> str:
    return _checked("BigQuery dataset", text, DATASET,
                    "1-1024 letters, digits or underscores")


def bigquery_table(text) -> str:
    if (not isinstance(text, str) or not text or len(text.encode("utf-8", "replace")) > 1024
            or not all(unicodedata.category(c)[0] in "LMN"
                       or unicodedata.category(c) in _TABLE_CATEGORIES for c in text)):
        raise InvalidName(f"invalid BigQuery table {text!r}: 1-1024 bytes of letters, "
                          "marks, numbers, underscores, dashes or spaces")
    return text


def table_reference(project: str, dataset: str, table: str) -> str:
    """A table as SQL names it: `project.dataset.table`, every part checked first."""
    return f"`{bigquery_project(project)}.{bigquery_dataset(dataset)}.{bigquery_table(table)}`"


def pubsub_subscription(text) -> str:
    return _checked("Pub/Sub subscription", text, SUBSCRIPTION,
                    "projects/PROJECT/subscriptions/NAME, NAME 3-255 characters "
                    "starting with a letter")


def pubsub_topic(text) -> str:
    return _checked("Pub/Sub topic", text, TOPIC,
                    "projects/PROJECT/topics/NAME, NAME 3-255 characters starting with a letter")


def pubsub_id(text) -> str:
    """A bare topic or subscription name (the local stack's and the publisher's options)."""
    return _checked("Pub/Sub name", text, f"^{_PUBSUB_ID}$",
                    "3-255 letters, digits or -_.~+%, starting with a letter")


def new_run_id(kind: str) -> str:
    """A new run's id, `<kind>-<UTC start, yyyymmdd-hhmmss>-<6 random hex digits>`: sorts by
    start time, and two runs started in the same second still differ."""
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
