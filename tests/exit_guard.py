"""Ends a test process that would not exit, printing what holds it.

A thread that never ends and is not a daemon (Beam's runner joining a worker
process that was never told to stop, say) keeps the interpreter from exiting
after pytest's summary: CI then runs into its time limit, and shows nothing of
why. So once pytest is done, a daemon thread waits for the interpreter to begin
exiting (the main thread ends), then `exit_grace` seconds more; if the process is
still there, it prints every thread's stack and exits failing. A process that
exits in time never sees it, nor does one that calls pytest and goes on (mutmut).
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading

def pytest_addoption(parser):
    parser.addini("exit_grace", "seconds the process may take to exit after the tests",
                  default="120")


def pytest_sessionfinish(session, exitstatus):
    grace = float(session.config.getini("exit_grace"))  # float-ok: seconds, not usage
    threading.Thread(target=_end_if_still_running, args=(grace, int(exitstatus)),
                     daemon=True, name="exit-guard").start()


def _end_if_still_running(grace: float, status: int) -> None:
    threading.main_thread().join()
    threading.Event().wait(grace)
    held = [t.name for t in threading.enumerate()
            if not t.daemon and t is not threading.main_thread()]
    sys.stderr.write(f"\nthe test process did not exit {grace:g} s after its main thread ended; "
                     f"threads that are not daemons: {', '.join(held) or 'none'}. "
                     "Every thread's stack:\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr)
    sys.stderr.flush()
    os._exit(status or 1)
