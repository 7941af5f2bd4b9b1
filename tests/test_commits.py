"""How a run settles when another run of the period committed the same revision
(`transforms.restate.settle`, used by recompute and rating commits alike): exactly one
of the holders stays, whatever order they look in."""
import itertools

import pytest

from transforms.restate import FINAL, WAIT, WITHDRAW, settle


def staged_only(*run_ids):
    return lambda run_id: run_id in run_ids


@pytest.mark.parametrize("me,holders,staged,step", [
    ("b", {"b"}, staged_only("b"), FINAL),             # alone with its revision
    ("b", {"a", "b"}, staged_only("a"), FINAL),        # final already: the rival gives way
    ("a", {"a", "b"}, staged_only("a", "b"), WAIT),    # first by run id, no rival final
    ("b", {"a", "b"}, staged_only("a", "b"), WITHDRAW),
    ("a", {"a", "b"}, staged_only("a"), WITHDRAW),     # a rival is final: even the first
    ("b", {"a", "b", "c"}, staged_only("a", "b", "c"), WITHDRAW),
])
def test_one_step_per_situation(me, holders, staged, step):
    assert settle(me, holders, staged) == step


@pytest.mark.parametrize("order", list(itertools.permutations("abc")))
def test_exactly_one_holder_stays_in_any_order(order):
    """Three runs committed the same revision; they look in `order`, again and again,
    each acting on what it sees: one ends final, the others take themselves back."""
    holders, staged, done = set("abc"), set("abc"), {}
    for me in itertools.islice(itertools.cycle(order), 12):
        if me in done:
            continue
        step = settle(me, set(holders), staged.__contains__)
        if step == FINAL:
            staged.discard(me)
            done[me] = FINAL
        elif step == WITHDRAW:
            holders.discard(me)
            staged.discard(me)
            done[me] = WITHDRAW
    assert sorted(done.values()) == [FINAL, WITHDRAW, WITHDRAW]
    assert holders == {run for run, step in done.items() if step == FINAL}
