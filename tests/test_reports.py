"""`tallyflow explain` and `tallyflow statement` end by the one error policy: a bad
argument exits 2 with its reason, a failing BigQuery call exits 3 naming the call, and
a bug exits 3 with its type and where it happened, so none of them looks like another."""
import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines import policy
from tallyflow.reports import data, explain, statement
from tests.conftest import EXAMPLE_METERS

PROJECT = "tallyflow-test"
DENIED = "this dataset is not yours"


def common(endpoint: str) -> list[str]:
    return ["--meters", str(EXAMPLE_METERS), "--bigquery_project", PROJECT,
            "--bigquery_dataset", "metering", "--bigquery_endpoint", endpoint]


EXPLAIN = ["--subject", "acme", "--meter", "api_requests"]
STATEMENT = ["--subject", "acme"]
COMMANDS = [("explain", explain.main, EXPLAIN), ("statement", statement.main, STATEMENT)]


def errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines()
            if "reading usage" not in line]  # statement's progress line


@pytest.fixture
def denying_bigquery():
    """An HTTP endpoint that answers every BigQuery call 403 Forbidden."""
    class Deny(BaseHTTPRequestHandler):
        def _deny(self):
            body = json.dumps({"error": {"code": 403, "message": DENIED, "errors": [
                {"reason": "accessDenied", "message": DENIED}]}}).encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _deny

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


@pytest.mark.parametrize("name,main,args", COMMANDS)
def test_a_reversed_period_is_a_bad_argument(capsys, name, main, args):
    code = main(args + common("http://127.0.0.1:9") + [
        "--period-start", "2026-11-02T00:00:00Z", "--period-end", "2026-11-01T00:00:00Z"])
    assert (code, errors(capsys)) == (
        2, [f"tallyflow {name}: --period-start must be before --period-end"])


@pytest.mark.parametrize("name,main,args", COMMANDS)
def test_a_malformed_time_is_a_bad_argument(capsys, name, main, args):
    code = main(args + common("http://127.0.0.1:9") + [
        "--period-start", "yesterday", "--period-end", "2026-11-01T00:00:00Z"])
    assert (code, errors(capsys)) == (
        2, [f"tallyflow {name}: time 'yesterday' is not RFC 3339 with an offset "
            "(e.g. 2026-01-01T00:00:00Z)"])


@pytest.mark.parametrize("name,main,args", COMMANDS)
def test_a_failing_bigquery_call_is_named_not_a_bad_argument(capsys, denying_bigquery, name,
                                                             main, args):
    code = main(args + common(denying_bigquery) + [
        "--period-start", "2026-11-01T00:00:00Z", "--period-end", "2026-11-02T00:00:00Z"])
    jobs = f"{denying_bigquery}/bigquery/v2/projects/{PROJECT}/jobs?prettyPrint=false"
    assert (code, errors(capsys)) == (
        3, [f"tallyflow {name}: BigQuery call Client.query failed: Forbidden: 403 POST {jobs}: "
            f"{DENIED}"])


def test_a_bug_shows_its_type_and_where_it_happened(capsys, monkeypatch):
    """A usage row whose window_start is not a TIMESTAMP (a bug, not an outage)."""
    monkeypatch.delenv(policy.DEBUG_ENV, raising=False)
    monkeypatch.setattr(data.Dataset, "query", lambda self, *a, **k: [
        {"subject": "acme", "dimensions": "{}", "window_start": "2026-11-01",
         "window_end": "2026-11-01"}])
    code = explain.main(EXPLAIN + common("http://127.0.0.1:9") + [
        "--window-start", "2026-11-01T00:00:00Z"])
    try:
        "2026-11-01" - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    except TypeError as error:
        reason = str(error)
    line = data.ns_of.__code__.co_firstlineno + 2  # its body: the docstring, then the sum
    assert (code, errors(capsys)) == (
        3, [f"tallyflow explain: unexpected TypeError at tallyflow/reports/data.py:{line} in "
            f"ns_of: {reason} (set {policy.DEBUG_ENV}=1 for the traceback)"])
