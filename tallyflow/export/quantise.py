"""Whole-number quantisation for providers whose meters hold integers (Stripe).

The rule: within one customer x meter series of a period, windows in order
(window start, then dimensions), each window is sent the change in the
*rounded running total*:

    sent_k = round(S_k) - round(S_{k-1}),   S_k = v_1 + ... + v_k (exact)

rounded half up. The remainder S_k - round(S_k) is carried to the next window
(and recorded in the ledger), so the provider's sum is round(S_n): tallyflow's
exact total rounded once, never a sum of per-window roundings. With
non-negative values every sent_k is non-negative. A restated window changes
the running totals from it on; the exporter corrects the windows whose
quantity changed.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Iterable, NamedTuple


class Quantised(NamedTuple):
    quantity: int  # whole units sent for this window
    remainder: Decimal  # exact running total minus whole units sent so far


def round_once(total: Decimal) -> int:
    """The one rounding of the rule: half up, to a whole number."""
    return int(total.to_integral_value(rounding=ROUND_HALF_UP))


def quantise(values: Iterable[Decimal]) -> list[Quantised]:
    """Exact window values (in series order) -> whole quantities with carried remainders."""
    out, running, sent = [], Decimal(0), 0
    for value in values:
        running += value
        quantity = round_once(running) - sent
        sent += quantity
        out.append(Quantised(quantity, running - sent))
    return out
