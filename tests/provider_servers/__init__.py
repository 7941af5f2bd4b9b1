"""Local servers for the billing providers tallyflow exports to (Stripe, Orb, Lago).

There is no network to the providers here, and no maintained local server
serves the endpoints the exporter uses (`localstripe` 1.15 has no Billing
Meters; Orb and Lago publish none), so each module is a small local HTTP
server following that provider's published API reference for those
endpoints: request validation, authentication, idempotency-key semantics
(the same key with the same body is one event; the same key with a different
body is an error), rate-limit responses with `Retry-After`, and errors in the
provider's own error shape. The official SDKs reach them through their
documented base-URL settings.

`ProviderServer` adds what the tests need around that: injected failures
(429 with Retry-After, 5xx) and a hold, which applies a request and then
withholds its response until released, so a test can kill an exporter between
a provider accepting a request and the exporter hearing about it.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit


class Reply(NamedTuple):
    status: int
    body: dict
    headers: dict = {}


class Request(NamedTuple):
    method: str
    path: str
    query: dict
    body: dict
    headers: dict  # lower-case names


class ProviderServer:
    """Base: subclasses implement `handle(request) -> Reply` and `authorised(request)`."""

    api_key = "test-key"

    def __init__(self):
        self.lock = threading.RLock()
        self.faults: list[list] = []  # [path prefix, status, retry_after, remaining]
        self.calls: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self.clock_offset = 0.0  # seconds the server's clock is ahead of the wall clock
        self._hold_after: int | None = None
        self.held = threading.Event()
        self._release = threading.Event()
        self._mutations = 0
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ test controls
    def now(self) -> float:
        return time.time() + self.clock_offset

    def inject(self, status: int, count: int = 1, path: str = "", retry_after: int | None = None):
        """The next `count` requests under `path` answer `status` without being applied."""
        with self.lock:
            self.faults.append([path, status, retry_after, count])

    def hold_after(self, accepted: int) -> None:
        """Apply the (accepted+1)-th mutating request, then hold its response."""
        self._hold_after, self._mutations = accepted, 0
        self.held.clear()
        self._release.clear()

    def release(self) -> None:
        self._hold_after = None
        self._release.set()

    def statuses(self, path: str = "") -> list[int]:
        return [status for _, p, status in self.calls if p.startswith(path)]

    # ------------------------------------------------------------ serving
    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self):
                server._dispatch(self)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        self.release()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def parse_body(self, content_type: str, raw: bytes) -> dict:
        return json.loads(raw) if raw else {}

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            body = self.parse_body(headers.get("content-type", ""), raw)
            request = Request(handler.command, url.path, dict(parse_qsl(url.query)), body,
                              headers)
            reply = self._reply(request)
        except ValueError as error:
            reply = self.error(400, f"malformed request: {error}")
        with self.lock:
            self.calls.append((handler.command, url.path, reply.status))
        mutating = handler.command != "GET" and reply.status < 300
        if mutating and self._hold_after is not None:
            with self.lock:
                self._mutations += 1
                hold = self._mutations > self._hold_after
            if hold:
                self.held.set()
                self._release.wait(timeout=120)
        payload = json.dumps(reply.body).encode()
        handler.send_response(reply.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        try:
            handler.wfile.write(payload)
        except OSError:  # the client was killed while its response was held
            pass

    def _reply(self, request: Request) -> Reply:
        if not self.authorised(request):
            return self.error(401, "invalid API key")
        with self.lock:
            for fault in self.faults:
                if fault[3] > 0 and request.path.startswith(fault[0]):
                    fault[3] -= 1
                    headers = {"Retry-After": str(fault[2])} if fault[2] is not None else {}
                    return self.error(fault[1], "injected failure", headers)
            return self.handle(request)

    # ------------------------------------------------------------ for subclasses
    def authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    def error(self, status: int, message: str, headers: dict | None = None, **extra) -> Reply:
        raise NotImplementedError

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client killed mid-request (the tests do that) is not an error of the server."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def canonical(body) -> str:
    return json.dumps(body, sort_keys=True, default=str)
