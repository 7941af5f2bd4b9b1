"""The local stack: the real Pub/Sub emulator and a BigQuery emulator on loopback.

`tallyflow local up` starts both as separate server processes, creates the
topic, the subscriptions, the dataset, every table and view of
`schemas/tables.py`, and records ports and PIDs in `RUN_DIR/stack.json`, so
`down` can stop exactly what `up` started and nothing else.

* Pub/Sub: the emulator shipped with the Cloud SDK, through its direct launcher
  (it execs Java, so the recorded PID is the server; the `gcloud beta emulators`
  wrapper would leave an orphan Java process behind).
* BigQuery: `local-bigquery` (best fidelity of the PyPI emulators: it honours
  insert ids). It needs Python 3.13 and, offline, DuckDB pinned to 1.5.5 with its
  extensions installed from PyPI wheels, so `install` builds it its own virtual
  environment in a cache directory, like a database server, not a library.

The functions here are the API the tests, the demo and the pipelines use:
`up`, `down`, `status`, `connect`, `install`, and the client factories.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.policy import RUNTIME_FAILURE, SUCCESS, CommandFailed, name_option, run_command
from schemas import names

HOST = "127.0.0.1"
DEFAULT_RUN_DIR = ".tallyflow/local"
DEFAULT_PROJECT = "tallyflow-local"
DEFAULT_DATASET = "metering"
DEFAULT_TOPIC = "usage-events"
DEFAULT_SUBSCRIPTION = "usage-events-sub"
DEAD_LETTER_TOPIC = "usage-dead-letter"
DEAD_LETTER_SUBSCRIPTION = "usage-dead-letter-sub"
# A message the pipeline can never acknowledge (e.g. a malformed timestamp
# attribute) goes to the dead-letter topic after this many deliveries.
MAX_DELIVERY_ATTEMPTS = 5
RETENTION_SECONDS = 7 * 86400  # Pub/Sub's maximum for retained acknowledged messages
STATE_FILE = "stack.json"

LOCAL_BIGQUERY = "local-bigquery==0.4.0"
DUCKDB_VERSION = "1.5.5"  # 0.4.0's DuckDB 2.0 downloads extensions at run time
DUCKDB_EXTENSIONS = ("ducklake", "icu", "spatial")

_INSTALL_EXTENSIONS = """
import importlib, pathlib, sys, duckdb
con = duckdb.connect()
for name in sys.argv[1:]:
    package = importlib.import_module("duckdb_extension_" + name)
    path = next(pathlib.Path(package.__path__[0]).rglob("*.duckdb_extension"))
    con.execute(f"INSTALL '{path}'")
"""

# Our own children, kept so they can be reaped when stopped: a zombie still
# answers kill(pid, 0) and would look alive.
_CHILDREN: dict[int, subprocess.Popen] = {}


class StackError(CommandFailed):
    """A one-line, user-facing reason why the stack cannot do what was asked."""


@dataclass(frozen=True)
class LocalStack:
    """Where a running local stack listens and which processes serve it."""

    run_dir: Path
    project: str
    dataset: str
    topic: str
    subscription: str
    pubsub_port: int
    bigquery_port: int
    bigquery_grpc_port: int
    pubsub_pid: int
    bigquery_pid: int
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    dead_letter_subscription: str = DEAD_LETTER_SUBSCRIPTION
    host: str = HOST

    @property
    def pubsub_host(self) -> str:
        return f"{self.host}:{self.pubsub_port}"

    @property
    def bigquery_endpoint(self) -> str:
        return f"http://{self.host}:{self.bigquery_port}"

    @property
    def bigquery_grpc_address(self) -> str:
        return f"{self.host}:{self.bigquery_grpc_port}"

    def topic_path(self, topic: str | None = None) -> str:
        return f"projects/{self.project}/topics/{topic or self.topic}"

    def subscription_path(self, subscription: str | None = None) -> str:
        return f"projects/{self.project}/subscriptions/{subscription or self.subscription}"

    def env(self) -> dict[str, str]:
        """The variables Google's clients (and Beam's Pub/Sub IO) read to find emulators."""
        return {"PUBSUB_EMULATOR_HOST": self.pubsub_host,
                "BIGQUERY_EMULATOR_HOST": self.bigquery_endpoint,
                "BIGQUERY_STORAGE_EMULATOR_HOST": self.bigquery_grpc_address,
                "GOOGLE_CLOUD_PROJECT": self.project}

    def target(self):
        """The stack's dataset as every BigQuery caller reaches it."""
        from transforms.bigquery_target import BigQueryTarget

        return BigQueryTarget(self.project, self.dataset, self.bigquery_endpoint,
                              storage_endpoint=self.bigquery_grpc_address)

    def bigquery_client(self):
        return self.target().client()

    def publisher_client(self, **kwargs):
        return publisher_client(self.pubsub_host, **kwargs)

    def subscriber_client(self):
        return subscriber_client(self.pubsub_host)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "run_dir": str(self.run_dir)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "LocalStack":
        values = json.loads(text)
        return cls(**{**values, "run_dir": Path(values["run_dir"])})


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int
    address: str
    running: bool  # the recorded process is alive and is the one we started
    ready: bool  # it answers on its port
    problem: str | None = None  # it answers, but with an error


# ---------------------------------------------------------------- clients

def publisher_client(pubsub_host: str, **kwargs):
    """A `pubsub_v1.PublisherClient` on the emulator, without touching os.environ."""
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    return pubsub_v1.PublisherClient(
        transport=PublisherGrpcTransport(channel=grpc.insecure_channel(pubsub_host)), **kwargs)


def subscriber_client(pubsub_host: str):
    """A `pubsub_v1.SubscriberClient` on the emulator, without touching os.environ."""
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    return pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(pubsub_host)))


# ---------------------------------------------------------------- install

def emulator_home() -> Path:
    """Where the BigQuery emulator's virtual environment is cached (shared by all run dirs)."""
    if os.environ.get("TALLYFLOW_EMULATOR_HOME"):
        return Path(os.environ["TALLYFLOW_EMULATOR_HOME"]).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (cache / "tallyflow" / "bigquery-emulator").resolve()


def _install_marker() -> dict:
    return {"local_bigquery": LOCAL_BIGQUERY, "duckdb": DUCKDB_VERSION,
            "extensions": list(DUCKDB_EXTENSIONS)}


def is_installed(home: Path | None = None) -> bool:
    """The marker matches these pins and the extensions are still where DuckDB looks."""
    home = home or emulator_home()
    marker = home / "installed.json"
    extensions = home / "home" / ".duckdb" / "extensions" / f"v{DUCKDB_VERSION}"
    return (marker.exists() and json.loads(marker.read_text()) == _install_marker()
            and all(any(extensions.glob(f"*/{name}.duckdb_extension"))
                    for name in DUCKDB_EXTENSIONS))


def install(home: Path | None = None, progress=None) -> Path:
    """Build the BigQuery emulator's venv once (the marker file makes it idempotent)."""
    home = home or emulator_home()
    progress = progress or _say
    if is_installed(home):
        return home
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".lock"):
        if is_installed(home):  # another process finished it while we waited
            return home
        started = time.monotonic()
        venv = home / "venv"
        for leftover in (venv, home / "home"):  # of an interrupted or damaged install
            shutil.rmtree(leftover, ignore_errors=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        steps = [
            ("Python 3.13 virtual environment", [_python313(), "-m", "venv", str(venv)]),
            (LOCAL_BIGQUERY, pip + [LOCAL_BIGQUERY]),
            (f"DuckDB {DUCKDB_VERSION} and its extensions",
             pip + [f"duckdb=={DUCKDB_VERSION}"]
             + [f"duckdb-extension-{name}=={DUCKDB_VERSION}" for name in DUCKDB_EXTENSIONS]),
            ("DuckDB extensions into the emulator's private HOME",
             [str(venv / "bin" / "python"), "-c", _INSTALL_EXTENSIONS, *DUCKDB_EXTENSIONS]),
        ]
        log = home / "install.log"
        log.write_text("")
        for number, (what, command) in enumerate(steps, 1):
            progress(f"installing the BigQuery emulator in {home}: [{number}/{len(steps)}] {what}")
            _run_logged(command, log, env=_emulator_env(home), what=what)
        (home / "installed.json").write_text(json.dumps(_install_marker(), indent=2) + "\n")
        progress(f"installed the BigQuery emulator in {time.monotonic() - started:.0f} s")
    return home


def _python313() -> str:
    """A Python 3.13 interpreter for local-bigquery (it needs >= 3.13; tallyflow runs on 3.11)."""
    if os.environ.get("TALLYFLOW_EMULATOR_PYTHON"):
        return os.environ["TALLYFLOW_EMULATOR_PYTHON"]
    if shutil.which("pyenv"):
        versions = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True,
                                  text=True).stdout.split()
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
        for version in sorted((v for v in versions if v.startswith("3.13.")), reverse=True):
            candidate = Path(root) / "versions" / version / "bin" / "python3.13"
            if candidate.exists():
                return str(candidate)
    found = shutil.which("python3.13")
    if found and "/shims/" not in found:
        return found
    raise StackError("the BigQuery emulator needs Python 3.13 and none was found "
                     "(install it, e.g. `pyenv install 3.13`, or set TALLYFLOW_EMULATOR_PYTHON)")


def _emulator_env(home: Path) -> dict[str, str]:
    """A private HOME: DuckDB looks for its extensions under $HOME/.duckdb."""
    duckdb_home = home / "home"
    duckdb_home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HOME": str(duckdb_home)}


def _run_logged(command: list[str], log: Path, env: dict, what: str) -> None:
    with log.open("a") as out:
        out.write(f"$ {shlex.join(command[:4])} ...\n")
        out.flush()
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise StackError(f"installing the BigQuery emulator failed at {what}: "
                         f"{_last_line(log)} (log: {log})")


@contextlib.contextmanager
def _locked(path: Path):
    """Serialise concurrent installs (e.g. CI setup and a test session)."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- up

def up(run_dir: str | Path = DEFAULT_RUN_DIR, *, project: str = DEFAULT_PROJECT,
       dataset: str = DEFAULT_DATASET, topic: str = DEFAULT_TOPIC,
       subscription: str = DEFAULT_SUBSCRIPTION, pubsub_port: int | None = None,
       bigquery_port: int | None = None, bigquery_grpc_port: int | None = None,
       timeout: float = 60.0, progress=None) -> LocalStack:
    """Start (or reuse) the stack in run_dir and create every resource; idempotent."""
    progress = progress or _say
    run_dir = Path(run_dir).resolve()
    wanted = {"project": project, "dataset": dataset, "topic": topic,
              "subscription": subscription, "pubsub_port": pubsub_port,
              "bigquery_port": bigquery_port, "bigquery_grpc_port": bigquery_grpc_port}
    stack = _running_stack(run_dir)
    if stack:
        _check_same(stack, wanted)
        progress(f"reusing the local stack already running in {run_dir}")
        _provision_or_explain(stack)
        return stack
    stack = _start(run_dir, install(progress=progress), wanted, timeout, progress)
    try:
        _provision_or_explain(stack)
    except BaseException:
        down(run_dir)  # a stack without its resources is of no use: leave nothing behind
        raise
    return stack


def _provision_or_explain(stack: LocalStack) -> None:
    try:
        provision(stack)
    except Exception as error:
        raise StackError(f"creating resources on the local stack failed: "
                         f"{_one_line(error)}") from error


def _running_stack(run_dir: Path) -> LocalStack | None:
    """The recorded stack if both its servers still run and answer; else clean up leftovers."""
    stack = _read_state(run_dir)
    if stack is None:
        return None
    if all(s.running and s.ready for s in _services(stack)):
        return stack
    _stop(stack, grace=10.0)
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    return None


def _check_same(stack: LocalStack, wanted: dict) -> None:
    for name, value in wanted.items():
        if value is not None and getattr(stack, name) != value:
            raise StackError(f"a local stack with {name}={getattr(stack, name)} already runs in "
                             f"{stack.run_dir}; run `tallyflow local down` first")


def _start(run_dir: Path, home: Path, wanted: dict, timeout: float, progress) -> LocalStack:
    java = shutil.which("java")
    if java is None:
        raise StackError("Java is not installed (the Pub/Sub emulator needs `java` on PATH)")
    ports = _choose_ports(wanted["pubsub_port"], wanted["bigquery_port"],
                          wanted["bigquery_grpc_port"])
    run_dir.mkdir(parents=True, exist_ok=True)
    data_dir = run_dir / "bigquery-data"
    shutil.rmtree(data_dir, ignore_errors=True)  # Pub/Sub starts empty; so does BigQuery
    started = time.monotonic()
    pubsub_pid = _spawn([str(_pubsub_launcher()), f"--host={HOST}", f"--port={ports[0]}"],
                        run_dir / "pubsub.log", run_dir, os.environ.copy())
    bigquery_pid = _spawn([str(home / "venv" / "bin" / "local-bigquery"), "serve",
                           "--host", HOST, "--port", str(ports[1]), "--grpc-port", str(ports[2]),
                           "--project", wanted["project"], "--dataset", wanted["dataset"],
                           "--data-dir", str(data_dir)],
                          run_dir / "bigquery.log", run_dir, _emulator_env(home))
    stack = LocalStack(run_dir=run_dir, pubsub_port=ports[0], bigquery_port=ports[1],
                       bigquery_grpc_port=ports[2], pubsub_pid=pubsub_pid,
                       bigquery_pid=bigquery_pid,
                       **{k: wanted[k] for k in ("project", "dataset", "topic", "subscription")})
    _write_state(stack)  # first, so `down` can stop a stack whose start is interrupted
    try:
        _wait_ready(stack, timeout)
    except BaseException:
        down(run_dir)
        raise
    progress(f"local stack up in {time.monotonic() - started:.1f} s "
             f"(Pub/Sub {stack.pubsub_host}, BigQuery {stack.bigquery_endpoint})")
    return stack


def _pubsub_launcher() -> Path:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise StackError("the Google Cloud SDK is not installed (`gcloud` is not on PATH)")
    root = subprocess.run([gcloud, "info", "--format=value(installation.sdk_root)"],
                          capture_output=True, text=True).stdout.strip()
    launcher = Path(root) / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    if not launcher.exists():
        raise StackError(f"the Pub/Sub emulator is not installed in the Cloud SDK at {root} "
                         "(install the google-cloud-cli-pubsub-emulator component)")
    return launcher


def _choose_ports(*explicit: int | None) -> tuple[int, ...]:
    """Explicit ports must be free; the others are picked by the kernel, all distinct."""
    names = ("--pubsub-port", "--bigquery-port", "--bigquery-grpc-port")
    for name, port in zip(names, explicit):
        if port is not None and explicit.count(port) > 1:
            raise StackError(f"port {port} is given twice ({name} and another port option)")
        if port is not None and not _port_free(port):
            raise StackError(f"port {port} on {HOST} ({name}) is already in use")
    chosen: list[int] = []
    for port in explicit:
        while port is None or port in chosen:
            port = _free_port()
        chosen.append(port)
    return tuple(chosen)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _spawn(command: list[str], log: Path, cwd: Path, env: dict) -> int:
    """Start a server in its own session so Ctrl-C in the shell that ran `up` spares it."""
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                   start_new_session=True)
    _CHILDREN[process.pid] = process
    return process.pid


def _wait_ready(stack: LocalStack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    logs = {"pubsub": "pubsub.log", "bigquery": "bigquery.log"}
    labels = {"pubsub": "the Pub/Sub emulator", "bigquery": "the BigQuery emulator"}
    pending = {s.name for s in _services(stack)}
    while pending:
        for service in _services(stack):
            if service.name not in pending:
                continue
            log = stack.run_dir / logs[service.name]
            if not service.running:
                raise StackError(f"{labels[service.name]} failed to start: {_last_line(log)} "
                                 f"(log: {log})")
            if service.problem:
                raise StackError(f"{labels[service.name]} failed to start: {service.problem} "
                                 f"(log: {log})")
            if service.ready:
                pending.discard(service.name)
        if pending and time.monotonic() > deadline:
            name = sorted(pending)[0]
            log = stack.run_dir / logs[name]
            raise StackError(f"{labels[name]} did not answer within {timeout:.0f} s: "
                             f"{_last_line(log)} (log: {log})")
        time.sleep(0.1)


def provision(stack: LocalStack) -> None:
    """Create-if-missing every topic, subscription, dataset, table and view."""
    _provision_pubsub(stack)
    _provision_bigquery(stack)


def _provision_pubsub(stack: LocalStack) -> None:
    from google.api_core.exceptions import AlreadyExists

    publisher, subscriber = stack.publisher_client(), stack.subscriber_client()
    for topic in (stack.topic, stack.dead_letter_topic):
        with contextlib.suppress(AlreadyExists):
            publisher.create_topic(name=stack.topic_path(topic), timeout=10)
    subscriptions = [
        # Acknowledged messages are kept, so a restarted stream can seek back
        # (docs/streaming.md, "Stop and restart without loss").
        {"name": stack.subscription_path(), "topic": stack.topic_path(),
         "ack_deadline_seconds": 60, "retain_acked_messages": True,
         "message_retention_duration": {"seconds": RETENTION_SECONDS},
         "dead_letter_policy": {"dead_letter_topic": stack.topic_path(stack.dead_letter_topic),
                                "max_delivery_attempts": MAX_DELIVERY_ATTEMPTS}},
        {"name": stack.subscription_path(stack.dead_letter_subscription),
         "topic": stack.topic_path(stack.dead_letter_topic), "ack_deadline_seconds": 60},
    ]
    for request in subscriptions:
        with contextlib.suppress(AlreadyExists):
            subscriber.create_subscription(request=request, timeout=10)


def _provision_bigquery(stack: LocalStack) -> None:
    from google.cloud import bigquery

    from schemas.tables import TABLES, VIEWS

    client = stack.bigquery_client()
    client.create_dataset(bigquery.Dataset(f"{stack.project}.{stack.dataset}"), exists_ok=True)
    for table in TABLES:
        client.create_table(table.bigquery_table(stack.project, stack.dataset), exists_ok=True)
    for view in VIEWS:
        wanted = bigquery.Table(f"{stack.project}.{stack.dataset}.{view.name}")
        wanted.view_query = view.query(stack.project, stack.dataset)
        wanted.description = view.description
        existing = client.create_table(wanted, exists_ok=True)
        if existing.view_query != wanted.view_query:  # the definition changed since `up`
            client.update_table(wanted, ["view_query", "description"])


# ---------------------------------------------------------------- state, status, down

def connect(run_dir: str | Path = DEFAULT_RUN_DIR) -> LocalStack:
    """The stack running in run_dir, or a StackError telling the user to start it."""
    run_dir = Path(run_dir).resolve()
    stack = _read_state(run_dir)
    if stack is None or not all(s.running for s in _services(stack)):
        raise StackError(f"no local stack is running in {run_dir} (run `tallyflow local up`)")
    return stack


def status(run_dir: str | Path = DEFAULT_RUN_DIR) -> list[ServiceStatus]:
    """What the run dir recorded and whether each server still runs and answers."""
    stack = _read_state(Path(run_dir).resolve())
    return _services(stack) if stack else []


def down(run_dir: str | Path = DEFAULT_RUN_DIR, grace: float = 10.0) -> bool:
    """Stop the recorded servers by PID, wait for their ports to close, remove state."""
    run_dir = Path(run_dir).resolve()
    stack = _read_state(run_dir)
    if stack is None:
        return False
    _stop(stack, grace)
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "bigquery-data", ignore_errors=True)
    return True


def _read_state(run_dir: Path) -> LocalStack | None:
    path = run_dir / STATE_FILE
    return LocalStack.from_json(path.read_text()) if path.exists() else None


def _write_state(stack: LocalStack) -> None:
    path = stack.run_dir / STATE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(stack.to_json())
    temporary.replace(path)  # atomic: a reader never sees half a file


def _services(stack: LocalStack) -> list[ServiceStatus]:
    pubsub = _probe(f"http://{stack.pubsub_host}/")
    bigquery = _probe(f"{stack.bigquery_endpoint}/bigquery/v2/projects/{stack.project}/datasets")
    return [
        ServiceStatus("pubsub", stack.pubsub_pid, stack.pubsub_host,
                      _is_ours(stack.pubsub_pid, stack.pubsub_port), *pubsub),
        ServiceStatus("bigquery", stack.bigquery_pid, stack.bigquery_endpoint,
                      _is_ours(stack.bigquery_pid, stack.bigquery_port),
                      bigquery[0] and _port_open(stack.bigquery_grpc_port), bigquery[1]),
    ]


def _stop(stack: LocalStack, grace: float) -> None:
    """SIGTERM both servers at once, SIGKILL what outlives the grace, then wait for the ports."""
    targets = [(stack.pubsub_pid, stack.pubsub_port), (stack.bigquery_pid, stack.bigquery_port)]
    alive = [pid for pid, port in targets if _is_ours(pid, port)]
    for pid in alive:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(pid) for pid in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in alive:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    ports = (stack.pubsub_port, stack.bigquery_port, stack.bigquery_grpc_port)
    deadline = time.monotonic() + 5.0
    while any(_alive(pid) for pid in alive) or any(_port_open(port) for port in ports):
        if time.monotonic() > deadline:
            raise StackError(f"the local stack in {stack.run_dir} did not stop: "
                             f"PIDs {alive} or ports {ports} still in use")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Alive and not a zombie; reaps the process if it is our child."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _is_ours(pid: int, port: int) -> bool:
    """The PID is alive and still the server on that port (PIDs get reused)."""
    if not _alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            arguments = cmdline.read().decode(errors="replace").replace("=", "\0").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "--port" in arguments and str(port) in arguments


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


def _probe(url: str) -> tuple[bool, str | None]:
    """(answers 200, the error it answers with): a broken server answers, but with an error."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True, None
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            body = json.loads(body)["error"]["message"]
        return False, f"HTTP {error.code}: {_one_line(body)}"
    except OSError:  # not listening (yet)
        return False, None


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
             if line.strip()] if log.exists() else []
    return lines[-1] if lines else "(empty log)"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:500] or type(error).__name__


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(f"tallyflow local {args.command}", lambda: args.handler(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tallyflow local",
        description="Run the Pub/Sub and BigQuery emulators on loopback for tallyflow.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_dir = argparse.ArgumentParser(add_help=False)
    run_dir.add_argument("--run-dir", default=os.environ.get("TALLYFLOW_RUN_DIR", DEFAULT_RUN_DIR),
                         help="where the stack keeps its state and logs "
                              "(env TALLYFLOW_RUN_DIR; default %(default)s)")

    start = commands.add_parser("up", parents=[run_dir], help="start the stack and create "
                                "topic, subscriptions, dataset, tables and views")
    start.add_argument("--project", default=DEFAULT_PROJECT, help="default %(default)s",
                       type=name_option(names.bigquery_project))
    start.add_argument("--dataset", default=DEFAULT_DATASET, help="default %(default)s",
                       type=name_option(names.bigquery_dataset))
    start.add_argument("--topic", default=DEFAULT_TOPIC, help="default %(default)s",
                       type=name_option(names.pubsub_id))
    start.add_argument("--subscription", default=DEFAULT_SUBSCRIPTION,
                       type=name_option(names.pubsub_id),
                       help="default %(default)s")
    start.add_argument("--pubsub-port", type=int, help="default: a free port")
    start.add_argument("--bigquery-port", type=int, help="default: a free port")
    start.add_argument("--bigquery-grpc-port", type=int,
                       help="the BigQuery Storage API port; default: a free port")
    start.add_argument("--timeout", type=float, default=60.0,
                       help="seconds to wait for the servers to answer (default %(default)s)")
    start.set_defaults(handler=_cmd_up)

    stop = commands.add_parser("down", parents=[run_dir],
                               help="stop the stack and remove its state")
    stop.set_defaults(handler=_cmd_down)
    show = commands.add_parser("status", parents=[run_dir], help="show what runs where "
                               "(exit 1 if not running)")
    show.set_defaults(handler=_cmd_status)
    env = commands.add_parser("env", parents=[run_dir],
                              help='print exports for `eval "$(tallyflow local env)"`')
    env.set_defaults(handler=_cmd_env)
    setup = commands.add_parser("install", help="install the BigQuery emulator into its cache "
                                "(env TALLYFLOW_EMULATOR_HOME; `up` does it when missing)")
    setup.set_defaults(handler=_cmd_install)
    return parser


def _cmd_up(args) -> int:
    stack = up(args.run_dir, project=args.project, dataset=args.dataset, topic=args.topic,
               subscription=args.subscription, pubsub_port=args.pubsub_port,
               bigquery_port=args.bigquery_port, bigquery_grpc_port=args.bigquery_grpc_port,
               timeout=args.timeout)
    _print_stack(stack, _services(stack))
    run_dir = shlex.quote(str(stack.run_dir))
    print(f'\nfor other shells: eval "$(tallyflow local env --run-dir {run_dir})"')
    return 0


def _cmd_down(args) -> int:
    stopped = down(args.run_dir)
    print(f"local stack in {Path(args.run_dir).resolve()} "
          + ("stopped" if stopped else "was not running"))
    return 0


def _cmd_status(args) -> int:
    stack = _read_state(Path(args.run_dir).resolve())
    if stack is None:
        print(f"no local stack recorded in {Path(args.run_dir).resolve()}")
        return RUNTIME_FAILURE
    services = _services(stack)
    _print_stack(stack, services)
    return SUCCESS if all(s.running and s.ready for s in services) else RUNTIME_FAILURE


def _cmd_env(args) -> int:
    stack = connect(args.run_dir)
    print("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in stack.env().items()))
    return 0


def _cmd_install(args) -> int:
    home = install()
    print(f"BigQuery emulator installed in {home}")
    return 0


def _print_stack(stack: LocalStack, services: list[ServiceStatus]) -> None:
    print(f"local stack in {stack.run_dir} (project {stack.project}, dataset {stack.dataset})")
    for service in services:
        state = ("running" if service.ready else service.problem or "not answering") \
            if service.running else "not running"
        print(f"  {service.name:<9} {service.address:<24} pid {service.pid:<8} {state}")
    print(f"  topic {stack.topic_path()}  subscription {stack.subscription_path()}")
    print(f"  dead letters {stack.topic_path(stack.dead_letter_topic)}  "
          f"subscription {stack.subscription_path(stack.dead_letter_subscription)}")
    print(f"  BigQuery Storage API (gRPC) {stack.bigquery_grpc_address}")


if __name__ == "__main__":
    sys.exit(main())
