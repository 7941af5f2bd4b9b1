"""What events say reaches an operator's terminal escaped: no event can drive it.

Identifiers with control or bidi characters are rejected (INVALID_CHARACTER),
but dimension values, UNIQUE_COUNT text, reasons and message ids may hold
anything; every printer escapes them per line with `printable`.
"""
from decimal import Decimal

from tallyflow.reports.explain import render, text_table
from pipelines.rate_usage import print_diff
from tallyflow.reports.statement import Bucket, Correction, MeterStatement, Statement, render_text
from schemas.catalog import parse_catalog
from schemas.values import UNSAFE_CHARACTERS, parse_rfc3339

HOSTILE = "eu\x1b]0;owned\x07\x1b[2J\u202e\r\nfake: MATCH\x9b31m"


def assert_safe(text: str) -> None:
    for line in text.split("\n"):
        assert not UNSAFE_CHARACTERS.search(line), repr(line)
    assert "fake: MATCH" not in text.split("\n")  # the event cannot start a line of its own


def test_tables_escape_cells_and_stay_aligned():
    lines = text_table([("source", "id"), ("//s", HOSTILE), ("//t", "e2")])
    assert_safe("\n".join(lines))
    assert lines[2].index("e2") == lines[1].index("eu\\x1b]0;owned")


def explanation(**hostile) -> dict:
    event = {"source": "//s", "id": "e1", "time": "2026-11-02T09:00:00Z", "value": "1",
             "ingest_time": "2026-11-02T09:00:01Z", "message_id": HOSTILE, "late": False}
    return {"unit": "", "origin": "stream", "revision": None, "subject": "acme",
            "meter": "calls", "aggregation": "COUNT", "dimensions": '{"region":"%s"}' % HOSTILE,
            "window_start": "2026-11-02T09:00:00Z", "window_end": "2026-11-02T10:00:00Z",
            "value": "1", "event_count": 1, "fingerprint": "00", "events": [event],
            "dropped_duplicates": [], "stream_dropped_duplicates": [], "late_events": [],
            "history": [{"kind": "revision", "revision": 1, "run_id": "r", "at": "t",
                         "period": "p", "reason": HOSTILE, "value": "1", "event_count": 1,
                         "change": None}],
            "check": {"match": True, "event_count": 1, "value": "1", "fingerprint": "00"},
            **hostile}


def test_explain_escapes_dimensions_message_ids_and_reasons():
    text = render([explanation()], max_events=10)
    assert_safe(text)
    assert '{"region":"eu\\x1b]0;owned\\x07\\x1b[2J\\u202e\\x0d\\x0afake: MATCH\\x9b31m"}' in text


def test_rating_diff_escapes_subjects_and_cells(capsys):
    print_diff({"period_start": "a", "period_end": "b", "revision": 2, "changes": [
        {"line_type": "usage", "subject": HOSTILE, "plan": "p", "plan_version": 1,
         "price_id": "x", "dimensions": {"region": HOSTILE}, "kind": "changed",
         "old_amount": "1", "new_amount": "2", "difference": "1", "currency": "USD"}],
        "invoices": [{"subject": HOSTILE, "currency": "USD", "previous_total": "1",
                      "total": "2"}]})
    assert_safe(capsys.readouterr().out)


def test_statement_escapes_the_subject_and_correction_reasons():
    day = parse_rfc3339("2026-11-02T00:00:00Z")
    meter = parse_catalog({"meters": [{"key": "calls", "event_type": "call",
                                       "aggregation": "COUNT"}]}).meters[0]
    bucket = Bucket(start_ns=day, final=Decimal(1), figure=Decimal(1))
    text = render_text(Statement(
        subject=HOSTILE, start_ns=day, end_ns=day + 86400 * 10 ** 9, since_ns=None,
        as_of_ns=day, meters=[MeterStatement(meter, bucket, days=[bucket])],
        corrections=[Correction("calls", '{"region":"%s"}' % HOSTILE, day, Decimal(1),
                                Decimal(2), 2, "run", HOSTILE, day)]))
    assert_safe(text)
    assert "Usage statement for eu\\x1b]0;owned" in text
