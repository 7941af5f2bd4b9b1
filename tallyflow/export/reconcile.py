"""`tallyflow reconcile --provider stripe|orb|lago`: does the provider hold exactly
tallyflow's usage for a period?

Per subject x meter of the period it compares three numbers with what the
provider should hold (Stripe: the exact total rounded once; Orb and Lago: the
exact total): the ledger's account of what was sent, and the provider's own
report (Stripe: meter event summaries; Orb: the events found by their
idempotency keys; Lago: the events found by their transaction ids). Results go
to `export_reconciliation`; the command exits 1 on any difference, so a team
can gate invoicing on it.
"""
from __future__ import annotations

import argparse
import sys
from decimal import Decimal

from pipelines.policy import DIFFERENCE, SUCCESS, CommandFailed, run_command
from schemas.tables import EXPORT_RECONCILIATION
from schemas.values import format_time, printable
from tallyflow.export.command import add_provider_arguments, prepare
from tallyflow.export.engine import Context
from tallyflow.export.ledger import BigQueryLedger, latest
from tallyflow.export.retry import RetryPolicy
from tallyflow.export.usage import UsageRow, read_usage

MATCH, DIFFERENT = "MATCH", "DIFFERENT"


def compare(provider, rows: list[UsageRow], state: dict, context: Context,
            policy: RetryPolicy) -> list[dict]:
    """One result per subject x meter the usage or the ledger knows in the period."""
    usage: dict[tuple, Decimal] = {}
    for row in rows:
        usage[(row.subject, row.meter)] = usage.get((row.subject, row.meter), 0) + row.value
    ledger: dict[tuple, Decimal] = {}
    for window, value in provider.ledger_totals(state).items():
        if context.period_start <= window[3] < context.period_end:
            ledger[window[:2]] = ledger.get(window[:2], 0) + value
    pairs = set(usage) | set(ledger)

    def call(request):
        outcome = policy.call(provider.name, request, provider.classify)
        if outcome.rejection is not None:
            raise CommandFailed(f"{provider.name} refused a reconciliation read: "
                                f"{outcome.rejection.status} {outcome.rejection.message}")
        return outcome.response

    held = provider.provider_totals(pairs, state, context, call)
    results = []
    for subject, meter in sorted(pairs):
        exact = usage.get((subject, meter), Decimal(0))
        expected = provider.expected_total(exact)
        sides = {"ledger": ledger.get((subject, meter), Decimal(0)),
                 "provider": held.get((subject, meter))}
        wrong = [f"{side} {value}" for side, value in sides.items() if value != expected]
        results.append({
            "subject": subject, "customer": context.mapping.customer(subject), "meter": meter,
            "usage_value": exact, "expected_value": expected, "ledger_value": sides["ledger"],
            "provider_value": sides["provider"],
            "difference": None if sides["provider"] is None else sides["provider"] - expected,
            "status": DIFFERENT if wrong else MATCH,
            "reason": f"expected {expected}, " + ", ".join(wrong) if wrong else None})
    return results


def record(where, provider: str, results: list[dict], context: Context) -> None:
    if not results:
        return
    rows = [{k: (str(v) if isinstance(v, Decimal) else v) for k, v in result.items()}
            | {"provider": provider, "period_start": format_time(context.period_start),
               "period_end": format_time(context.period_end), "run_id": context.run_id,
               "reconciled_at": format_time(context.now - context.now % 1000)}
            for result in results]
    errors = where.client().insert_rows_json(where.table_id(EXPORT_RECONCILIATION), rows,
                                             timeout=30)
    if errors:
        raise RuntimeError(f"export_reconciliation rejected rows: {errors[:3]}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tallyflow reconcile --provider", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_provider_arguments(parser, "--provider")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command("tallyflow reconcile", lambda: _reconcile(args))


def _reconcile(args) -> int:
    provider, where, context = prepare(args, "reconcile")
    start, end = context.period_start, context.period_end
    state = latest(BigQueryLedger(where).load(args.provider, start, end))
    results = compare(provider, read_usage(where, start, end), state, context, RetryPolicy())
    record(where, args.provider, results, context)
    different = [r for r in results if r["status"] == DIFFERENT]
    print(f"reconciliation {context.run_id} with {args.provider}: {format_time(start)} .. "
          f"{format_time(end)}: {len(results) - len(different)} {MATCH}, "
          f"{len(different)} {DIFFERENT}")
    for r in different[:20]:
        print(printable(f"  {DIFFERENT} {r['subject']} {r['meter']}: {r['reason']}"))
    return DIFFERENCE if different else SUCCESS


if __name__ == "__main__":
    sys.exit(main())
