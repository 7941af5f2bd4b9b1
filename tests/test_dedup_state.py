"""Deduplication's state keeps a signature's digest, not the signature: the rule is unchanged.

The stream used to compare a redelivered copy's metering signature with the kept
copy's, both in full; it now compares their `signature_digest`s. On any pair of
signatures (equal, re-spelled or subtly different) the two comparisons must
agree, and state pickled by the old release must decode to the same digest.
"""
import pickle
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Reading
from schemas.metering import conflicts, signature_digest
from transforms.dedup import SeenCoder

# Spellings of a few numbers: equal numbers spelled apart must stay equal.
SPELLINGS = [["0", "-0", "0E-5", "0.00"], ["1", "1.0", "1E0", "0.1E1"], ["10", "1E1", "10.000"],
             ["1.5", "1.50", "15E-1"], ["1000", "1E+3"], ["-0.000000001", "-1E-9"],
             ["99999999999999999999999999999.999999999"], ["1E-38", "0.1E-37"]]
DECIMALS = st.sampled_from([s for group in SPELLINGS for s in group]).map(Decimal)
TEXTS = st.sampled_from(["1", "1.0", "u1", "", "é", "\u2028"])
VALUES = st.one_of(DECIMALS, TEXTS, st.none())
TEXT = st.sampled_from(["a", "b", "", "cust-1", "é", '"', "\\", "a,b", "[1]"])
DIMENSIONS = st.sampled_from(["{}", '{"region":"eu"}', '{"region":"us"}'])
READING = st.builds(Reading, st.sampled_from(["calls", "amount", "users"]), DIMENSIONS, VALUES)
SIGNATURE = st.tuples(TEXT, TEXT, st.sampled_from([0, 1, 1735689600123456789]),
                      st.lists(READING, max_size=3).map(tuple))


@st.composite
def signature_pairs(draw):
    """Two signatures: unrelated; the first with one part re-drawn; the first with its
    numbers spelled apart (equal); or with one number given as its text (unequal)."""
    first = draw(SIGNATURE)
    how = draw(st.sampled_from(["unrelated", "one part", "re-spelled", "as text"]))
    if how == "unrelated":
        return first, draw(SIGNATURE)
    if how == "one part":
        part, other = draw(st.integers(0, 3)), draw(SIGNATURE)
        return first, tuple(other[i] if i == part else first[i] for i in range(4))
    numbers = [i for i, r in enumerate(first[3]) if isinstance(r.value, Decimal)]
    chosen = numbers if how == "re-spelled" else numbers[:1]
    readings = tuple(r._replace(value=draw(spelling(r.value, how == "as text")))
                     if i in chosen else r for i, r in enumerate(first[3]))
    return first, first[:3] + (readings,)


def spelling(number: Decimal, as_text: bool):
    """Another spelling of an equal number (as a Decimal, or as text)."""
    group = next(g for g in SPELLINGS if number in map(Decimal, g))
    others = [s for s in group if s != str(number)] or group
    return st.sampled_from(others if as_text else [Decimal(s) for s in others])


@settings(max_examples=500)
@given(signature_pairs())
def test_digests_conflict_exactly_when_signatures_do(pair):
    kept, copy = pair
    assert conflicts(signature_digest(copy), signature_digest(kept)) == conflicts(copy, kept)


@given(SIGNATURE, st.text(max_size=30))
def test_state_of_the_earlier_release_decodes_to_the_digest_of_its_signature(signature, position):
    old = pickle.dumps((signature, position), protocol=4)  # 0.1.0's PickleCoder state
    assert SeenCoder().decode(old) == (signature_digest(signature), position)
    assert SeenCoder().decode(pickle.dumps((signature, position), pickle.HIGHEST_PROTOCOL)) == \
        (signature_digest(signature), position)


@given(SIGNATURE, st.text(max_size=30))
def test_the_new_state_round_trips(signature, position):
    seen = (signature_digest(signature), position)
    assert SeenCoder().decode(SeenCoder().encode(seen)) == seen
