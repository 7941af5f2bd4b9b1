"""How every tallyflow command ends: the one error policy, its exit codes, clean stops.

It lives with the pipelines because their own entry points (a Flex Template
launch runs `python -m pipelines.X`) end by it too; the `tallyflow` command
(`tallyflow.cli`) runs every subcommand's `main` through it as well.

Every `main` runs its work through `run_command`:
  0  success
  1  a conservation or reconciliation difference (the command returns it)
  2  bad arguments or configuration: a one-line reason
  3  a runtime failure: unreadable input, a failing service (which service and
     which call), a failed pipeline step, or an unexpected error (its type and
     where it happened); the traceback only with TALLYFLOW_DEBUG=1
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

from schemas import names

SUCCESS, DIFFERENCE, BAD_ARGUMENTS, RUNTIME_FAILURE = 0, 1, 2, 3
DEBUG_ENV = "TALLYFLOW_DEBUG"
# Where our packages sit: a checkout, or site-packages once installed (where every
# library sits too, so a frame is ours by its top-level folder, not by the root alone).
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_OURS = {"schemas", "transforms", "pipelines", "tallyflow", "tests", "benchmarks"}
_STEP = re.compile(r" \[while running '([^']*)'\]")
# google/cloud/<package>/... -> the service a failing call belongs to
_SERVICES = {"bigquery": "BigQuery", "bigquery_storage_v1": "BigQuery Storage",
             "pubsub_v1": "Pub/Sub", "pubsub": "Pub/Sub", "storage": "Cloud Storage"}

# Set by SIGTERM once `stop_on_sigterm` is called: a long-running command then stops
# cleanly when it next looks, instead of dying wherever the signal found it.
STOP_REQUESTED = threading.Event()


def stop_on_sigterm() -> threading.Event:
    signal.signal(signal.SIGTERM, lambda *_: STOP_REQUESTED.set())
    return STOP_REQUESTED


class CommandFailed(RuntimeError):
    """A runtime failure a command detected itself (exit 3); its message is the whole
    reason, naming what failed."""


def name_option(rule):
    """An argparse type applying a naming rule of `schemas.names`: a bad name is a bad
    argument, reported with the rule before anything is built from it."""
    def parse(text):
        try:
            return rule(text)
        except names.InvalidName as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = rule.__name__
    return parse


def run_command(prog: str, work: Callable[[], int | None],
                usage_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Runs `work` (a command's body) under the one error policy; returns the exit code.

    ValueError (catalog, price book, option and name errors derive from it) and
    `usage_errors` are bad arguments; a Google API, auth or HTTP error is a
    service failure; `CommandFailed` (the local stack's errors too) says its
    own reason; anything else is a runtime failure."""
    try:
        return work() or SUCCESS
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the policy: every error becomes one line and a code
        code, reason = classify(error, usage_errors)
        if os.environ.get(DEBUG_ENV):
            traceback.print_exception(error)
        elif code == RUNTIME_FAILURE and reason.startswith("unexpected"):
            reason += f" (set {DEBUG_ENV}=1 for the traceback)"
        print(f"{prog}: {reason}", file=sys.stderr)
        return code


def quiet_beam() -> None:
    """Beam's warnings, less two kinds of noise (kept with TALLYFLOW_DEBUG): the
    traceback it logs for a failing step, which the policy's one line replaces, and
    "unparseable argument" for every option of a pipeline's own options class (Beam
    re-parses options knowing only PipelineOptions' direct subclasses)."""
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    if not os.environ.get(DEBUG_ENV):
        for noisy in ("apache_beam.runners.common", "apache_beam.options.pipeline_options"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)


def classify(error: BaseException, usage_errors=()) -> tuple[int, str]:
    """(exit code, one-line reason) for an error a command raised."""
    step = _STEP.search(str(error))
    if step:  # a pipeline step raised: Beam re-raised it with the step's name appended
        return _runtime(error, f" in pipeline step '{step.group(1)}'")
    if isinstance(error, usage_errors + (ValueError,)) and not _service_error(error):
        return BAD_ARGUMENTS, first_line(error)
    return _runtime(error, "")


def _runtime(error: BaseException, where: str) -> tuple[int, str]:
    from transforms.files import UnreadableInput
    from transforms.rating import StaleRating
    from transforms.restate import ConcurrentCommit, IncompleteWrite

    if isinstance(error, (UnreadableInput, CommandFailed, ConcurrentCommit, IncompleteWrite,
                          StaleRating)):
        return RUNTIME_FAILURE, first_line(error)
    if _service_error(error):
        service, call = _service_call(error)
        return RUNTIME_FAILURE, (f"{service} call {call} failed{where}: "
                                 f"{type(error).__name__}: {first_line(error)}")
    if isinstance(error, OSError):
        return RUNTIME_FAILURE, f"{type(error).__name__}{where}: {first_line(error)}"
    return RUNTIME_FAILURE, (f"unexpected {type(error).__name__}{where} at {_origin(error)}: "
                             f"{first_line(error)}")


def _service_error(error: BaseException) -> bool:
    kinds = []
    for module, name in (("google.api_core.exceptions", "GoogleAPIError"),
                         ("google.auth.exceptions", "GoogleAuthError"),
                         ("requests.exceptions", "RequestException")):
        try:
            kinds.append(getattr(importlib.import_module(module), name))
        except ImportError:
            continue
    return isinstance(error, tuple(kinds))


def _service_call(error: BaseException) -> tuple[str, str]:
    """The service and client call a service error came from, read off its traceback:
    the outermost frame inside a google.cloud client library."""
    tb = error.__traceback__
    while tb is not None:
        parts = Path(tb.tb_frame.f_code.co_filename).parts
        if "google" in parts and parts[parts.index("google") + 1:][:1] == ("cloud",):
            package = parts[parts.index("google") + 2]
            return (_SERVICES.get(package, f"google.cloud.{package}"),
                    tb.tb_frame.f_code.co_qualname)
        tb = tb.tb_next
    return "Google API", "(unknown call)"


def _origin(error: BaseException) -> str:
    """file:line in function of the innermost tallyflow frame (else the innermost frame)."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if _ours(f.filename)] or frames
    if not ours:
        return "(no traceback)"
    frame = ours[-1]
    where = _ours(frame.filename) or frame.filename
    return f"{where}:{frame.lineno} in {frame.name}"


def _ours(filename: str) -> str | None:
    """The path of one of our files relative to the project root, else None."""
    try:
        relative = Path(filename).resolve().relative_to(_PROJECT_ROOT)
    except ValueError:
        return None
    return str(relative) if relative.parts[0] in _OURS else None


def first_line(error: BaseException) -> str:
    """An error's message as one line (Beam's step suffix dropped, whitespace folded)."""
    lines = _STEP.sub("", str(error)).strip().splitlines()
    return " ".join(lines[0].split())[:500] if lines else type(error).__name__

