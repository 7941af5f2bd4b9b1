"""The `tallyflow` command: one subcommand per pipeline or tool.

Each subcommand's module owns its arguments (`main(argv)`), so `tallyflow X
--help` and `python -m pipelines.X --help` document the same options, and every
`main` ends by the one error policy (`pipelines.policy`). Subcommand modules are
imported only when run, so `tallyflow local down` never loads Beam.
"""
from __future__ import annotations

import importlib
import sys

from pipelines.policy import BAD_ARGUMENTS, SUCCESS, stop_on_sigterm

# subcommand -> (module, one-line help)
COMMANDS = {
    "demo": ("tallyflow.local.demo", "The whole story on the local stack, with a report."),
    "stream": ("pipelines.streaming_usage", "Stream usage from Pub/Sub to BigQuery."),
    "recompute": ("pipelines.recompute_usage", "Recompute exact usage for a period (batch)."),
    "rate": ("pipelines.rate_usage", "Rate a period's usage into invoice lines (batch)."),
    "reconcile": ("tallyflow.reports.reconcile",
                  "Compare streaming and recomputed usage for a period."),
    "local": ("tallyflow.local.stack", "Start, stop or inspect the local emulator stack."),
    "publish": ("tallyflow.local.publish", "Publish usage events (JSONL or synthetic) to Pub/Sub."),
    "template": ("tallyflow.template", "Build the Dataflow Flex Templates offline."),
    "explain": ("tallyflow.reports.explain",
                "Explain a usage number: its events, duplicates, revisions."),
    "statement": ("tallyflow.reports.statement",
                  "A customer's usage statement (terminal and HTML)."),
    "settle-alerts": ("tallyflow.reports.alerts",
                      "Record `cleared` for usage alerts the final usage did not reach."),
    "export": ("tallyflow.export.command",
               "Send a closed period's usage to Stripe, Orb or Lago, exactly once."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(len(name) for name in COMMANDS)
        print("usage: tallyflow COMMAND [options]   (tallyflow COMMAND --help for its options)\n")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name.ljust(width)}  {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ntallyflow: unknown command {argv[0]!r}", file=sys.stderr)
            return BAD_ARGUMENTS
        return SUCCESS if argv else BAD_ARGUMENTS
    if argv[0] == "stream":
        stop_on_sigterm()  # before the slow imports: a stop is clean from the first moment
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
