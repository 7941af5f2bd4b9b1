"""The exit guard (tests/exit_guard.py), run on small test files in their own pytest."""
import subprocess
import sys

from tests.conftest import ROOT

LEAKS_A_THREAD = '''
import threading


def wait_for_ever():
    threading.Event().wait()


def test_leaves_a_thread_running():
    threading.Thread(target=wait_for_ever, name="left-behind").start()
'''

FAILS = "def test_fails():\n    assert 1 == 2\n"


def run_pytest(folder, source, grace="2"):
    (folder / "test_case.py").write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.exit_guard",
         "-o", f"exit_grace={grace}", "-o", "timeout=0", "--rootdir", str(folder),
         str(folder / "test_case.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_process_held_by_a_thread_ends_failing_and_shows_the_thread(tmp_path):
    result = run_pytest(tmp_path, LEAKS_A_THREAD)
    assert "1 passed" in result.stdout
    assert result.returncode == 1
    assert ("did not exit 2 s after its main thread ended; "
            "threads that are not daemons: left-behind") in result.stderr
    assert "in wait_for_ever" in result.stderr


def test_a_failed_run_held_by_a_thread_keeps_its_exit_code(tmp_path):
    result = run_pytest(tmp_path, LEAKS_A_THREAD + "\n\n" + FAILS)
    assert result.returncode == 1 and "1 failed, 1 passed" in result.stdout
    assert "left-behind" in result.stderr


def test_a_process_that_exits_in_time_is_left_alone(tmp_path):
    passing = run_pytest(tmp_path, "def test_passes():\n    pass\n", grace="30")
    assert (passing.returncode, passing.stderr) == (0, "")
    failing = run_pytest(tmp_path, FAILS, grace="30")
    assert failing.returncode == 1 and "did not exit" not in failing.stderr


def test_a_process_that_goes_on_after_pytest_is_not_ended(tmp_path):
    """A program that calls pytest and carries on (mutmut does) keeps running past the
    grace: only an exiting process is watched."""
    (tmp_path / "test_case.py").write_text("def test_passes():\n    pass\n")
    args = ["-q", "-p", "no:cacheprovider", "-p", "tests.exit_guard", "-o", "exit_grace=1",
            "--rootdir", str(tmp_path), str(tmp_path / "test_case.py")]
    program = (f"import time, pytest\ncode = pytest.main({args!r})\ntime.sleep(3)\n"
               "print('still running after', code)\n")
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "still running after 0" in result.stdout, result.stderr
