"""`tallyflow explain` and `tallyflow statement` on the local stack.

A messy three days (tests/messy.py) is loaded into `events` of a dataset of
this module's own, every copy ingested in line order. The "stream" saw every
event except a few too-late ones (in `late_events`); its panes are built here
from the generator's ground truth, with fingerprints. Days 1-2 are then closed
by `tallyflow recompute` (revision 1, which corrects the windows of the late
events), a late upload adds an event to day 1 and a second recompute restates
that day. Day 3 stays provisional.

For random usage rows, final and provisional, corrected or not, the events
explain lists must be exactly the ground truth's and must reproduce the row's
value, event count and fingerprint; the HTML statement is rendered by headless
Chromium and its chart and totals must match BigQuery.
"""
import itertools
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib
from decimal import Decimal
from types import SimpleNamespace

import pytest
import yaml

from schemas import aggregation
from schemas.events import Limits, UsageEvent, parse_payload
from schemas.sql import LINEAGE as LINEAGE_SQL
from schemas.values import format_decimal, format_time, parse_rfc3339
from tallyflow.reports.data import Dataset, ns_of
from tallyflow.reports.explain import explain
from tests.conftest import EXAMPLE_METERS, ROOT
from tests.messy import generate
from tests.reference import expected_usage, readings
from transforms.rows import (duplicate_row, event_row, late_event_row, usage_alert_row,
                            usage_pane_row)

DATASET = "explain_test"
HOUR = 3600 * 10 ** 9
CHROMIUM = "/usr/bin/chromium"
PERIOD = ("2026-11-01T00:00:00Z", "2026-11-04T00:00:00Z")
CLOSED = ("2026-11-01T00:00:00Z", "2026-11-03T00:00:00Z")
DAY_ONE = ("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z")
SUBJECT = "cust-000"
OTHER_SUBJECTS = ["cust-001", "cust-002", "cust-003"]
EXTRA = {"source": "//api.example.com/eu", "id": "evt-upload-1", "subject": SUBJECT,
         "type": "api.request", "time_ns": parse_rfc3339("2026-11-01T05:30:00.123456789Z"),
         "data": {"method": "GET", "bytes_out": Decimal("123456789012345678901234567")}}


def tallyflow(stack, *args):
    env = {**os.environ, **stack.env()}
    return subprocess.run([sys.executable, "-m", "tallyflow.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def insert(client, stack, table, keyed_rows):
    for i in range(0, len(keyed_rows), 500):
        batch = keyed_rows[i:i + 500]
        assert client.insert_rows_json(f"{stack.project}.{DATASET}.{table}",
                                       [r for _, r in batch],
                                       row_ids=[k for k, _ in batch]) == []


def truth_by_key(accepted: list[dict]) -> dict:
    """{(subject, meter, dims, window): {(source, id)}} from the generated values."""
    meters = yaml.safe_load(EXAMPLE_METERS.read_text())["meters"]
    keys: dict = {}
    for subject, meter, _, dims, time_ns, event_id, source, _, _ in readings(accepted, meters):
        keys.setdefault((subject, meter, dims, time_ns - time_ns % HOUR), set()).add(
            (source, event_id))
    return keys


@pytest.fixture(scope="module")
def world(stack, example_catalog):
    """Loads the three days, streams them (minus the too-late events), closes days 1-2,
    restates day 1 after a late upload. Returns what the tests compare against."""
    client = stack.bigquery_client()
    messy = generate(seed=23, events=500, subjects=4)
    ingest = parse_rfc3339("2026-11-10T00:00:00Z")
    copies: dict[tuple, list[UsageEvent]] = {}
    for n, line in enumerate(messy.lines, start=1):
        for result in parse_payload(line, f"msg-{n}", (n,), example_catalog, Limits(now_ns=None),
                                    ingest_ns=ingest + n * 1000):
            if isinstance(result, UsageEvent):
                copies.setdefault(result.identity, []).append(result)
    insert(client, stack, "events",
           [event_row(e, "loader") for group in copies.values() for e in group])
    # the stream dropped the later copies of an identity, and never counted too-late events
    insert(client, stack, "duplicate_events", [
        duplicate_row(SimpleNamespace(source=e.source, id=e.id, position=e.position,
                                      kept_position=group[0].position,
                                      conflict=_bills(e) != _bills(group[0])),
                      ingest, "stream-job") for group in copies.values() for e in group[1:]])
    everything = truth_by_key(messy.accepted)
    shared = {i for ids in everything.values() if len(ids) > 1 for i in ids}
    mine = sorted((t for t in messy.accepted
                   if t["subject"] == SUBJECT and t["type"] in ("api.request", "llm.completion")),
                  key=lambda t: t["time_ns"])
    day3 = parse_rfc3339(CLOSED[1])
    late = [t for t in mine if t["time_ns"] < day3][::40][:3] + \
        [t for t in mine if t["time_ns"] >= day3 and (t["source"], t["id"]) in shared][:1]
    late_ids = {(t["source"], t["id"]) for t in late}
    insert(client, stack, "late_events", [
        late_event_row(copies[i][0], 7 * 86400 * 10 ** 9, HOUR, "stream-job") for i in late_ids])
    streamed = [t for t in messy.accepted if (t["source"], t["id"]) not in late_ids]
    meters = yaml.safe_load(EXAMPLE_METERS.read_text())["meters"]
    stream_ids = truth_by_key(streamed)
    panes = []
    for key, (value, count) in expected_usage(streamed, meters, HOUR).items():
        subject, meter, dims, window = key
        row = {"subject": subject, "meter": meter, "dimensions": dims,
               "window_start": format_time(window), "window_end": format_time(window + HOUR),
               "value": format(value, "f"), "event_count": count,
               "fingerprint": aggregation.fingerprint_of(stream_ids[key]),
               "pane_timing": "ON_TIME", "pane_index": 0, "is_final": True}
        panes.append(usage_pane_row(row, False, parse_rfc3339("2026-11-05T00:00:00Z"),
                                    "stream-job"))
    insert(client, stack, "usage_panes", panes)

    closed = tallyflow(stack, "recompute", "--meters", str(EXAMPLE_METERS), "--bigquery_dataset",
                       DATASET, "--period-start", CLOSED[0], "--period-end", CLOSED[1],
                       "--reason", "november close")
    assert closed.returncode == 0, closed.stderr[-3000:]
    extra_line = json.dumps({"specversion": "1.0", "id": EXTRA["id"], "source": EXTRA["source"],
                             "type": EXTRA["type"], "subject": SUBJECT,
                             "time": "2026-11-01T06:30:00.123456789+01:00",
                             "data": {"method": "GET",
                                      "bytes_out": "123456789012345678901234567"}})
    upload = parse_payload(extra_line.encode(), "upload-1", (0,), example_catalog,
                           Limits(now_ns=None), ingest_ns=parse_rfc3339("2026-11-21T00:00:00Z"))
    insert(client, stack, "events", [event_row(upload[0], "loader")])
    restated = tallyflow(stack, "recompute", "--meters", str(EXAMPLE_METERS),
                         "--bigquery_dataset", DATASET, "--period-start", DAY_ONE[0],
                         "--period-end", DAY_ONE[1], "--reason", "late upload from eu gateway")
    assert restated.returncode == 0, restated.stderr[-3000:]
    return {"client": client, "final": truth_by_key(messy.accepted + [EXTRA]),
            "stream": stream_ids, "late": late_ids, "copies": copies,
            "accepted": messy.accepted + [EXTRA], "streamed": streamed}


def view_rows(world, stack, subject=None) -> list[dict]:
    where = "" if subject is None else f" WHERE subject = '{subject}'"
    rows = world["client"].query(
        f"SELECT * FROM `{stack.project}.{DATASET}.usage`{where}").result()
    return [dict(r.items()) for r in rows]


def _bills(event: UsageEvent) -> tuple:
    return event.subject, event.type, event.time_ns, event.readings


def key_of(row) -> tuple:
    return row["subject"], row["meter"], row["dimensions"], ns_of(row["window_start"])


def reproduce(explanation: dict, aggregation_name: str, numeric: bool):
    """Folds the listed events with the aggregation, independently of explain's own check."""
    acc = aggregation.new_accumulator(aggregation_name)
    for e in explanation["events"]:
        value = Decimal(e["value"]) if numeric else e["value"]
        aggregation.add_reading(acc, value, parse_rfc3339(e["time"]), e["id"],
                                aggregation.identity_hash(e["source"], e["id"]))
    return aggregation.extract(acc)


def test_listed_events_reproduce_random_rows_exactly(stack, world, example_catalog):
    rows = view_rows(world, stack)
    late_keys = {k for k, ids in world["final"].items() if ids & world["late"]}
    upload_key = (SUBJECT, "bytes_out", '{"method":"GET"}',
                  EXTRA["time_ns"] - EXTRA["time_ns"] % HOUR)
    chosen = random.Random(5)
    sample = chosen.sample(rows, 5) + [r for r in rows if key_of(r) == upload_key] + [
        chosen.choice([r for r in rows if key_of(r) in late_keys and r["origin"] == origin])
        for origin in ("recompute", "recompute", "stream")]
    assert {r["origin"] for r in sample} == {"stream", "recompute"}
    data = Dataset(stack.project, DATASET, stack.bigquery_endpoint)
    for row in sample:
        key = key_of(row)
        (explained,) = explain(data, example_catalog, row["subject"], row["meter"], key[3],
                               key[3] + 1000, row["dimensions"])
        meter = example_catalog.meter(row["meter"])
        value, count, fingerprint = reproduce(explained, meter.aggregation, meter.numeric)
        stored = row["value"] if row["value"] is not None else row["value_bignumeric"]
        assert (value, count, fingerprint) == (stored, row["event_count"], row["fingerprint"]), key
        assert explained["check"]["match"], key
        truth = (world["final"] if row["origin"] == "recompute" else world["stream"])[key]
        assert {(e["source"], e["id"]) for e in explained["events"]} == truth, key


def test_explain_tells_the_story_of_a_corrected_row(stack, world):
    window = format_time(EXTRA["time_ns"] - EXTRA["time_ns"] % HOUR)
    result = tallyflow(stack, "explain", "--meters", str(EXAMPLE_METERS), "--bigquery_dataset",
                       DATASET, "--subject", SUBJECT, "--meter", "bytes_out", "--window-start",
                       window)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "evt-upload-1" in out and "2026-11-01T05:30:00.123456789Z" in out
    assert "stream pane 0 ON_TIME" in out
    assert "because 'november close'" in out and "because 'late upload from eu gateway'" in out
    assert "changed +123456789012345678901234567" in out
    assert "MATCH" in out and "MISMATCH" not in out


def test_never_shows_another_customers_data(stack, world):
    result = tallyflow(stack, "explain", "--meters", str(EXAMPLE_METERS), "--bigquery_dataset",
                       DATASET, "--subject", SUBJECT, "--meter", "bytes_out",
                       "--period-start", DAY_ONE[0], "--period-end", DAY_ONE[1], "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    explained = json.loads(result.stdout)
    assert len(explained) == len([r for r in view_rows(world, stack, SUBJECT)
                                  if r["meter"] == "bytes_out" and r["window_start"].day == 1])
    assert {(e["source"], e["id"]) for x in explained for e in x["late_events"]} <= world["late"]
    dropped = [d for x in explained for d in x["dropped_duplicates"]]
    assert all(d["copy"] > 1 for d in dropped)
    statement = tallyflow(stack, "statement", "--meters", str(EXAMPLE_METERS),
                          "--bigquery_dataset", DATASET, "--subject", SUBJECT,
                          "--period-start", PERIOD[0], "--period-end", PERIOD[1])
    assert statement.returncode == 0, statement.stderr[-2000:]
    ours = {i for i, group in world["copies"].items() if any(e.subject == SUBJECT for e in group)}
    for out in (result.stdout, statement.stdout):
        assert not any(other in out for other in OTHER_SUBJECTS)
        assert set(re.findall(r"evt-\d{6}", out)) <= {event_id for _, event_id in ours}


@pytest.mark.parametrize("command", ["explain", "statement"])
def test_unknown_customer_or_meter_is_one_clear_line(stack, world, command):
    common = ["--meters", str(EXAMPLE_METERS), "--bigquery_dataset", DATASET,
              "--period-start", PERIOD[0], "--period-end", PERIOD[1]]
    meter = ["--meter", "api_requests"]
    for args, reason in ((["--subject", "nobody"] + meter, "unknown customer 'nobody'"),
                         (["--subject", SUBJECT, "--meter", "beer"], "unknown meter 'beer'")):
        result = tallyflow(stack, command, *common, *args)
        assert result.returncode == 2, result.stdout
        lines = [line for line in result.stderr.splitlines() if "reading usage" not in line]
        assert len(lines) == 1 and reason in lines[0], result.stderr
        assert result.stdout == ""


# ---------------------------------------------------------------- statement in Chromium


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, installed here when the machine lacks it."""
    if not os.path.exists(CHROMIUM):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        install = subprocess.run(sudo + ["apt-get", "install", "-y", "chromium"], env=env,
                                 capture_output=True, text=True, timeout=900)
        if install.returncode != 0:  # stale package lists
            subprocess.run(sudo + ["apt-get", "update"], env=env, capture_output=True,
                           timeout=600, check=True)
            subprocess.run(sudo + ["apt-get", "install", "-y", "chromium"], env=env,
                           capture_output=True, timeout=900, check=True)
    assert shutil.which(CHROMIUM), "chromium could not be installed"
    return CHROMIUM


def headless(chromium, tmp_path, *args, timeout=120):
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking", f"--user-data-dir={tmp_path}/profile",
                           *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def png_facts(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct scanlines) of a PNG, with the standard library only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            channels = {2: 3, 6: 4, 0: 1, 4: 2}[color] * depth // 8
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + width * channels
    return width, height, len({raw[i:i + stride] for i in range(0, len(raw), stride)})


def test_html_statement_renders_the_chart_and_bigquery_totals(stack, world, chromium, tmp_path):
    page = tmp_path / "statement.html"
    result = tallyflow(stack, "statement", "--meters", str(EXAMPLE_METERS), "--bigquery_dataset",
                       DATASET, "--subject", SUBJECT, "--period-start", PERIOD[0],
                       "--period-end", PERIOD[1], "--html", str(page))
    assert result.returncode == 0, result.stderr[-2000:]
    totals = {r["meter"]: r["total"] for r in world["client"].query(
        f"SELECT meter, SUM(value) AS total FROM `{stack.project}.{DATASET}.usage` "
        f"WHERE subject = '{SUBJECT}' AND meter IN ('api_requests', 'bytes_out', "
        f"'llm_input_tokens', 'llm_output_tokens', 'llm_cost_usd') GROUP BY meter").result()}
    for meter, total in totals.items():
        assert re.search(rf"^{meter} \(.*\)  total {format_decimal(total)} ", result.stdout, re.M), meter

    dom = headless(chromium, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    shown = dict(re.findall(r'<td class="total" data-meter="(\w+)">([^<]*)</td>', dom.stdout))
    for meter, total in totals.items():
        assert Decimal(shown[meter]) == total, meter
    charts = re.findall(r'<svg class="chart" data-meter="(\w+)"(.*?)</svg>', dom.stdout, re.S)
    assert {m for m, _ in charts} >= set(totals)
    bars = {m: len(re.findall(r'<rect class="bar (final|provisional)"', svg)) for m, svg in charts}
    assert all(bars[m] for m in totals)
    body = "".join(svg for _, svg in charts)
    assert 'class="bar final"' in body and 'class="bar provisional"' in body
    assert 'class="correction-marker"' in body

    shot = tmp_path / "statement.png"
    taken = headless(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600",
                     "--hide-scrollbars", page.as_uri())
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    width, height, distinct = png_facts(shot.read_bytes())
    assert (width, height) == (1200, 1600)
    assert distinct > 100, "the screenshot is nearly blank"


LIMITED = "api_requests"
NOVEMBER = ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")  # cust-000: calendar months


def test_html_statement_shows_each_limit_against_the_period_s_usage(stack, world, chromium,
                                                                    tmp_path):
    """Limits of the customer's own on api_requests: one threshold crossed, one crossed
    provisionally and cleared, one not reached; the page shows November's usage to date
    (from BigQuery here) against them, and the same rows as the terminal."""
    total = next(iter(world["client"].query(
        f"SELECT SUM(value) AS total FROM `{stack.project}.{DATASET}.usage` "
        f"WHERE subject = '{SUBJECT}' AND meter = '{LIMITED}' "
        f"AND window_start >= '{NOVEMBER[0]}' AND window_start < '{NOVEMBER[1]}'"
    ).result()))["total"]
    assert total > 10
    kept, cleared, far = int(total) // 2, int(total) + 3, int(total) * 10
    limits = tmp_path / "limits.yaml"
    limits.write_text(yaml.safe_dump({"limits": [{"subject": SUBJECT, "meter": LIMITED,
                                                  "thresholds": [far, kept, cleared]}]}))

    def alert(quantity, status, value, at):
        return {"alert_id": f"alert-{quantity}", "status": status, "subject": SUBJECT,
                "meter": LIMITED, "period_start": NOVEMBER[0], "period_end": NOVEMBER[1],
                "threshold": str(quantity), "threshold_quantity": str(quantity),
                "value": str(value), "crossed_at": at, "dimensions": '{"method": "GET"}',
                "window_start": "2026-11-02T07:00:00Z", "window_end": "2026-11-02T08:00:00Z",
                "pane_timing": "EARLY", "pane_index": 2}

    insert(world["client"], stack, "usage_alerts", [usage_alert_row(a, "stream-job") for a in (
        alert(kept, "crossed", kept + 1, "2026-11-02T07:40:05Z"),
        alert(cleared, "crossed", cleared + 1, "2026-11-03T12:00:01Z"),
        alert(cleared, "cleared", total, "2026-12-02T00:00:00Z"))])
    page = tmp_path / "statement.html"
    result = tallyflow(stack, "statement", "--meters", str(EXAMPLE_METERS), "--bigquery_dataset",
                       DATASET, "--subject", SUBJECT, "--period-start", PERIOD[0],
                       "--period-end", PERIOD[1], "--limits", str(limits), "--prices",
                       str(ROOT / "tallyflow" / "examples" / "prices.yaml"), "--html", str(page))
    assert result.returncode == 0, result.stderr[-2000:]
    dom = headless(chromium, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    (section,) = re.findall(rf'<section class="limit" data-meter="{LIMITED}" '
                            rf'data-period="{NOVEMBER[0]}">(.*?)</section>', dom.stdout, re.S)
    shown = re.search(r'<b class="usage"[^>]*>([^<]*)</b>', section).group(1)
    assert Decimal(shown) == total
    cells = lambda row: [re.sub(r"<[^>]+>", "", c)  # noqa: E731
                         for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    rows = {label: (status, cells(row)) for label, status, row in re.findall(
        r'<tr class="threshold-row" data-threshold="([^"]*)" data-status="([^"]*)">(.*?)</tr>',
        section, re.S)}
    assert list(rows) == [str(kept), str(cleared), str(far)]  # by quantity
    pane = "EARLY 2 of 2026-11-02T07:00:00Z"
    assert rows[str(kept)] == ("crossed", [str(kept), str(kept), "crossed",
                                           "2026-11-02T07:40:05Z", str(kept + 1), pane, "", ""])
    assert rows[str(cleared)] == ("cleared", [
        str(cleared), str(cleared), "cleared", "2026-11-03T12:00:01Z", str(cleared + 1), pane,
        format_decimal(total), "2026-12-02T00:00:00Z"])
    assert rows[str(far)] == ("not reached", [str(far), str(far), "not reached"] + [""] * 5)
    # the terminal's section: the same rows, with the usage to date on each
    text = result.stdout.split(f"Limits and alerts ({SUBJECT})\n")[1].splitlines()[1:]
    assert [re.split(r"\s{2,}", line.strip()) for line in text] == [
        ["2026-11-01", LIMITED, label, cells_[1], format_decimal(total)]
        + [c for c in cells_[2:] if c] for label, (_, cells_) in rows.items()]

    shot = tmp_path / "limits.png"
    taken = headless(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600",
                     "--hide-scrollbars", page.as_uri())
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    assert png_facts(shot.read_bytes())[2] > 100, "the screenshot is nearly blank"


def test_statement_corrections_since_the_last_statement(stack, world):
    runs = world["client"].query(
        f"SELECT reason, committed_at FROM `{stack.project}.{DATASET}.recompute_runs`").result()
    first_close = {r["reason"]: r["committed_at"] for r in runs}["november close"]
    result = tallyflow(stack, "statement", "--meters", str(EXAMPLE_METERS), "--bigquery_dataset",
                       DATASET, "--subject", SUBJECT, "--period-start", PERIOD[0],
                       "--period-end", PERIOD[1], "--since",
                       first_close.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    assert result.returncode == 0, result.stderr[-2000:]
    corrections = result.stdout.split("Corrections since ")[1].splitlines()
    assert corrections[0].endswith(": 2")  # the upload: api_requests and bytes_out
    assert "+123456789012345678901234567" in result.stdout
    assert "late upload from eu gateway" in result.stdout


def test_statement_corrections_against_the_streamed_figures(stack, world):
    """Without --since, a correction is every window of a recompute whose figure differs
    from the stream's (its latest pane): here, from the generator's ground truth."""
    meters = yaml.safe_load(EXAMPLE_METERS.read_text())["meters"]
    streamed = expected_usage(world["streamed"], meters, HOUR)
    final = expected_usage(world["accepted"], meters, HOUR)
    closed = range(parse_rfc3339(CLOSED[0]), parse_rfc3339(CLOSED[1]))
    figure = lambda found: "-" if found is None else format_decimal(found[0])  # noqa: E731
    expected = sorted(
        (meter, dims, format_time(window), figure(streamed.get(k)), figure(final.get(k)))
        for k in set(streamed) | set(final) for subject, meter, dims, window in [k]
        if subject == SUBJECT and window in closed
        and figure(streamed.get(k)) != figure(final.get(k)))
    result = tallyflow(stack, "statement", "--meters", str(EXAMPLE_METERS), "--bigquery_dataset",
                       DATASET, "--subject", SUBJECT, "--period-start", PERIOD[0],
                       "--period-end", PERIOD[1])
    assert result.returncode == 0, result.stderr[-2000:]
    section = result.stdout.split("Corrections since the provisional figures: ")[1]
    count, _, *rest = section.splitlines()
    rows = list(itertools.takewhile(str.strip, rest))  # the section ends at a blank line
    assert int(count) == len(expected) > 0
    assert sorted(tuple(re.split(r"\s{2,}", row.strip())[:5]) for row in rows) == expected


def test_lineage_query_in_the_docs_is_the_one_explain_runs():
    doc = (ROOT / "docs" / "analysts.md").read_text()
    documented = re.search(r"<!-- query: lineage -->\s*```sql\n(.*?)```", doc, re.S).group(1)
    assert documented.strip() == LINEAGE_SQL.format(
        recompute_runs="metering.recompute_runs", events="metering.events").strip()


# ---------------------------------------------------------------- one row's own copies

DIMS_SUBJECT = "cust-dims"
DIMS_DAY = ("2026-11-05T00:00:00Z", "2026-11-06T00:00:00Z")
# (identity, subject, method) per copy, in ingest order: the first copy of an identity is kept
DIMS_COPIES = [
    ("a1", DIMS_SUBJECT, "GET"), ("a2", DIMS_SUBJECT, "GET"), ("b1", DIMS_SUBJECT, "POST"),
    ("c1", DIMS_SUBJECT, "DELETE"), ("x1", "cust-elsewhere", "POST"),
    ("a1", DIMS_SUBJECT, "GET"),        # exact copy of a GET
    ("b1", DIMS_SUBJECT, "DELETE"),     # conflicting copy of a POST, would bill DELETE
    ("c1", DIMS_SUBJECT, "DELETE"), ("c1", DIMS_SUBJECT, "DELETE"),
    ("x1", DIMS_SUBJECT, "GET"),        # kept copy is another customer's
]


@pytest.fixture(scope="module")
def dims_world(stack, example_catalog):
    """One window with GET, POST and DELETE rows of one customer, every identity with
    dropped copies (by the recompute and by the stream); the day is then recomputed."""
    client = stack.bigquery_client()
    ingest = parse_rfc3339("2026-11-10T00:00:00Z")
    events = []
    for n, (identity, subject, method) in enumerate(DIMS_COPIES, start=1):
        line = json.dumps({"specversion": "1.0", "id": f"dims-{identity}", "source": "//dims",
                           "type": "api.request", "subject": subject,
                           "time": f"2026-11-05T10:{n:02d}:00Z",
                           "data": {"method": method, "bytes_out": n}})
        (event,) = parse_payload(line.encode(), f"dims-msg-{n}", (n,), example_catalog,
                                 Limits(now_ns=None), ingest_ns=ingest + n * 1000)
        events.append(event)
    insert(client, stack, "events", [event_row(e, "loader") for e in events])
    first = {}
    for e in events:
        first.setdefault(e.identity, e)
    insert(client, stack, "duplicate_events", [
        duplicate_row(SimpleNamespace(source=e.source, id=e.id, position=e.position,
                                      kept_position=first[e.identity].position,
                                      conflict=_bills(e) != _bills(first[e.identity])),
                      ingest, "stream-job") for e in events if first[e.identity] is not e])
    result = tallyflow(stack, "recompute", "--meters", str(EXAMPLE_METERS), "--bigquery_dataset",
                       DATASET, "--period-start", DIMS_DAY[0], "--period-end", DIMS_DAY[1])
    assert result.returncode == 0, result.stderr[-3000:]


def test_each_dimension_row_shows_only_its_own_dropped_copies(stack, dims_world):
    result = tallyflow(stack, "explain", "--meters", str(EXAMPLE_METERS), "--bigquery_dataset",
                       DATASET, "--subject", DIMS_SUBJECT, "--meter", "api_requests",
                       "--window-start", "2026-11-05T10:00:00Z", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    explained = {json.loads(x["dimensions"])["method"]: x for x in json.loads(result.stdout)}
    assert set(explained) == {"GET", "POST", "DELETE"}
    # independently: the row of an identity is its kept copy's method (or, when the kept
    # copy is another customer's, the method of ours); copies are this customer's later ones
    kept, owner, copies = {}, {}, {}
    for n, (identity, subject, method) in enumerate(DIMS_COPIES, start=1):
        if identity not in kept:
            kept[identity] = (subject, method)
        elif subject == DIMS_SUBJECT:
            copies.setdefault(identity, []).append(f"dims-msg-{n}")
    for identity, (subject, method) in kept.items():
        owner[identity] = method if subject == DIMS_SUBJECT else next(
            m for i, s, m in DIMS_COPIES if i == identity and s == DIMS_SUBJECT)
    for method, x in explained.items():
        mine = {i for i, m in owner.items() if m == method}
        assert {d["message_id"] for d in x["dropped_duplicates"]} == {
            c for i in mine for c in copies.get(i, [])}, method
        assert {d["id"] for d in x["stream_dropped_duplicates"]} == {
            f"dims-{i}" for i in mine if i in copies}, method
        assert {e["id"] for e in x["events"]} == {
            f"dims-{i}" for i in mine if kept[i][0] == DIMS_SUBJECT}, method
        assert x["check"]["match"], method
