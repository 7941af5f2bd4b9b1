"""The synthetic stream is deterministic, honours its fractions, and its labels are true.

"True" is checked against the real parser (`schemas.events.parse_payload`) and
the example catalog, so a label can never drift from what the pipeline does.
"""
import json
from collections import Counter

import pytest

from tallyflow.local.synthetic import (CONFLICT, DUPLICATE, FIRST_COPIES, INVALID, KINDS, LATE,
                                       ON_TIME, TOO_LATE, SyntheticConfig, count_kinds, generate)
from schemas.events import ERROR_CODES, Limits, Rejection, UsageEvent, parse_payload
from schemas.values import parse_rfc3339

FRACTIONS = dict(duplicate_fraction=0.10, conflict_fraction=0.25, late_fraction=0.05,
                 too_late_fraction=0.04, invalid_fraction=0.08)
MIXED = SyntheticConfig(seed=7, customers=25, events=20_000, rate=50, batch_size=4, **FRACTIONS)


@pytest.fixture(scope="module")
def stream():
    return generate(MIXED)


def labelled(messages):
    return [(message, label) for message in messages for label in message.labels]


def test_same_seed_same_stream_other_seed_other_stream():
    config = SyntheticConfig(seed=3, events=500, batch_size=3, **FRACTIONS)
    first, again = generate(config), generate(config)
    assert [m.data for m in first] == [m.data for m in again]
    assert [m.labels for m in first] == [m.labels for m in again]
    other = generate(SyntheticConfig(seed=4, events=500, batch_size=3, **FRACTIONS))
    assert [m.data for m in other] != [m.data for m in first]


def test_fractions_are_roughly_respected(stream):
    counts = count_kinds(stream)
    total = sum(counts[kind] for kind in KINDS)
    assert total == MIXED.events
    share = {kind: counts[kind] / total for kind in KINDS}
    # 20k draws: one standard deviation of a 10 % share is 0.2 %; allow 5.
    assert share[DUPLICATE] + share[CONFLICT] == pytest.approx(MIXED.duplicate_fraction, abs=0.01)
    assert counts[CONFLICT] / (counts[DUPLICATE] + counts[CONFLICT]) == pytest.approx(
        MIXED.conflict_fraction, abs=0.04)
    assert share[LATE] == pytest.approx(MIXED.late_fraction, abs=0.01)
    assert share[TOO_LATE] == pytest.approx(MIXED.too_late_fraction, abs=0.01)
    assert share[INVALID] == pytest.approx(MIXED.invalid_fraction, abs=0.01)
    reasons = {key.split(":", 1)[1] for key in counts if key.startswith("invalid:")}
    assert reasons == {"MALFORMED_JSON", "MISSING_ATTRIBUTE", "UNSUPPORTED_SPECVERSION",
                       "BAD_TIME", "FUTURE_TIME", "VALUE_NOT_NUMERIC", "VALUE_NEGATIVE"}


def test_no_fraction_means_a_clean_on_time_stream():
    messages = generate(SyntheticConfig(seed=1, events=300))
    assert count_kinds(messages) == Counter({ON_TIME: 300})
    assert len(messages) == 300


def test_labels_agree_with_the_parser(stream, example_catalog):
    for position, message in enumerate(stream):
        results = parse_payload(message.data, str(position), (position,), example_catalog,
                                Limits(now_ns=message.emitted_ns))
        assert len(results) == len(message.labels)
        for result, label in zip(results, message.labels):
            if label.kind == INVALID:
                assert isinstance(result, Rejection), label
                assert result.error_code == label.reason in ERROR_CODES
            else:
                assert isinstance(result, UsageEvent), (label, result)
                assert (result.source, result.id) == label.identity


def test_identities_account_for_every_event(stream):
    first_copies = {}
    for _, label in labelled(stream):
        if label.kind in FIRST_COPIES:
            assert label.identity not in first_copies, "a first copy reuses an identity"
            first_copies[label.identity] = label.event
        elif label.kind == DUPLICATE:
            assert first_copies[label.identity] == label.event
        elif label.kind == CONFLICT:
            original = first_copies[label.identity]
            assert original["data"] != label.event["data"]
            assert {**original, "data": None} == {**label.event, "data": None}
        elif label.identity is not None:
            assert label.identity not in first_copies, "an invalid event reuses an identity"


def test_lateness_is_relative_to_the_emitting_slot(stream):
    window, lateness = MIXED.window_ns, MIXED.allowed_lateness_ns
    seen = Counter()
    for message, label in labelled(stream):
        if label.kind not in FIRST_COPIES:
            continue
        time_ns = parse_rfc3339(label.event["time"])
        window_end = time_ns - time_ns % window + window
        assert time_ns <= message.emitted_ns
        if label.kind == ON_TIME:  # stamped at its own slot; a batch waits a few slots
            assert message.emitted_ns - time_ns < 60 * 10**9
        elif label.kind == LATE:
            assert window_end <= message.emitted_ns < window_end + lateness
        else:
            assert window_end + lateness < message.emitted_ns
        seen[label.kind] += 1
    assert set(seen) == set(FIRST_COPIES)


def test_batches_hold_at_most_batch_size_events_and_malformed_payloads_travel_alone(stream):
    for message in stream:
        if message.labels[0].reason == "MALFORMED_JSON":
            assert len(message.labels) == 1
            with pytest.raises(ValueError):
                json.loads(message.data)
            continue
        document = json.loads(message.data)
        assert isinstance(document, list) and 1 <= len(document) <= MIXED.batch_size
        assert document == [label.event for label in message.labels]
    single = generate(SyntheticConfig(seed=2, events=50, invalid_fraction=0.2))
    assert all(isinstance(json.loads(m.data), dict) for m in single
               if m.labels[0].reason != "MALFORMED_JSON")


def test_values_are_exact_never_floats(stream):
    def no_float(text):
        raise AssertionError(f"float {text} in a synthetic event")

    for message in stream:
        if message.labels[0].reason != "MALFORMED_JSON":
            json.loads(message.data, parse_float=no_float)


def test_emission_follows_the_rate(stream):
    emitted = [message.emitted_ns for message in stream]
    assert emitted == sorted(emitted)
    span_seconds = (emitted[-1] - MIXED.start_ns) / 10**9
    assert span_seconds == pytest.approx((MIXED.events - 1) / MIXED.rate, abs=1)


@pytest.mark.parametrize("bad", [dict(late_fraction=0.6, invalid_fraction=0.5),
                                 dict(duplicate_fraction=-0.1), dict(batch_size=0),
                                 dict(rate=0), dict(event_types=("sms.sent",)),
                                 dict(late_fraction=0.1, allowed_lateness_ns=3600 * 10**9)])
def test_impossible_configs_are_refused(bad):
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)
