"""`tallyflow demo` tells the whole story on a stack of its own and accounts for every record."""
import re
import subprocess
import sys


def test_demo_runs_end_to_end(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tallyflow.cli", "demo", "--events", "1500",
                             "--run-dir", str(tmp_path / "stack")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    out = result.stdout
    published = int(re.search(r"published (\d+) = (\d+) accounted for: conservation holds",
                              out).group(1))
    assert published == 1500
    # the stream caught up before the recompute: only too-late windows differ
    statuses = dict((s, int(n)) for n, s in re.findall(r"(\d+) (match|value_mismatch|"
                                                        r"missing_in_stream|missing_in_batch)",
                                                        out))
    assert statuses["value_mismatch"] == statuses["missing_in_batch"] == 0
    assert statuses["match"] > 0 and statuses["missing_in_stream"] > 0
    assert "local stack stopped" in out
