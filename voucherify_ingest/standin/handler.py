"""The stand-in's HTTP side: a threading server and the request handler (routes, bodies)."""

from __future__ import annotations

import ipaddress
import json
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from voucherify_ingest.jsoncodec import dumps_text as _dumps
from voucherify_ingest.standin.activity import activity_customer
from voucherify_ingest.standin.oauth import OAUTH_TOKEN_PATH
from voucherify_ingest.standin.records import Received
from voucherify_ingest.standin.wire import (
    _html_page,
    _huge_body,
    _inspect,
    _phrase,
    error_body,
    success_body,
)

if TYPE_CHECKING:
    from voucherify_ingest.standin.server import StandIn

EVENTS_PATH = "/v1/events"
CONTROL_PREFIX = "/_standin/"
EVENT_ID_HEADER = "X-Ingest-Event-Id"
MAX_BODY_BYTES = 16 * 1024 * 1024
IDLE_TIMEOUT_S = 30.0
_JSON = "application/json; charset=utf-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: StandIn

    def server_bind(self) -> None:  # skip HTTPServer's getfqdn(): it can block on DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def __init__(self, *args: Any, **kwargs: Any):
        self._live: dict[threading.Thread, socket.socket] = {}
        self._live_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def track(self, sock: socket.socket | None) -> None:
        with self._live_lock:
            if sock is None:
                self._live.pop(threading.current_thread(), None)
            else:
                self._live[threading.current_thread()] = sock

    def close_connections(self, deadline: float) -> None:
        with self._live_lock:
            live = list(self._live.items())
        for _, sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread, _ in live:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up is not news
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "voucherify-standin"
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT_S
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.track(None)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a benchmark at 2,000 req/s must not write 2,000 lines a second."""

    def _route(self) -> None:
        """Every method lands here, so unknown paths and methods answer in Voucherify's format."""
        method = self.command
        raw = self._read_body()
        if raw is None:
            return
        path, _, query = self.path.partition("?")
        standin = self.server.standin
        if path == OAUTH_TOKEN_PATH and method == "POST":
            self._oauth_token(standin, raw)
        elif path == EVENTS_PATH:
            if method == "POST":
                self._events(standin, raw)
            else:
                self._send(405, error_body(405, f"{method} is not allowed"), {"Allow": "POST"})
        elif method == "GET" and (ref := activity_customer(path)) is not None:
            self._activity(standin, ref, query)
        elif path.startswith(CONTROL_PREFIX):
            self._control(standin, method, path[len(CONTROL_PREFIX) :], raw)
        else:
            self._send(404, error_body(404, f"No route for {method} {path}"))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _route

    def _read_body(self) -> bytes | None:
        """The request body, or None once an error has been answered (and the connection ends)."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked()
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError("negative Content-Length")
        except ValueError as exc:
            status, why = 400, f"bad request framing: {exc}"
        else:
            if length <= MAX_BODY_BYTES:
                return self.rfile.read(length) if length else b""
            status, why = 413, f"body over {MAX_BODY_BYTES} bytes"
        self.close_connection = True
        self._send(status, error_body(status, why))
        return None

    def _read_chunked(self) -> bytes:
        parts, total = [], 0
        while size := int(self.rfile.readline(80).split(b";", 1)[0], 16):
            total += size
            if total > MAX_BODY_BYTES:
                raise ValueError("chunked body too large")
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)
        while self.rfile.readline(8192).strip():
            pass  # trailers up to the blank line
        return b"".join(parts)

    def _events(self, standin: StandIn, raw: bytes) -> None:
        at, mono = time.time(), time.monotonic()
        headers = dict(self.headers.items())
        low = {k.lower(): v for k, v in headers.items()}  # Message.get() scans every header
        app_id, token = low.get("x-app-id"), low.get("x-app-token")
        body, valid, errors, checked = _inspect(raw)
        pair_ok = app_id == standin.app_id and token == standin.app_token
        verdict = standin._decide(pair_ok or standin.tokens.valid(low.get("authorization")))
        status, out = verdict.status, verdict.body
        if verdict.drop:
            status = 0
        elif verdict.outcome == "unauthorized":
            if low.get("authorization"):
                out = error_body(401, "Invalid or expired access token")
            else:
                why = "Invalid" if app_id and token else "Missing"
                out = error_body(401, f"{why} X-App-Id or X-App-Token")
        elif status is None:
            ctype = low.get("content-type", "").split(";")[0].strip().lower()
            is_json = ctype == "application/json"
            if is_json and valid:
                status, out = 200, success_body(body)
            else:
                why = "; ".join(errors[:5]) if is_json else "Content-Type must be application/json"
                status, out, verdict.outcome = 400, error_body(400, why), "invalid_payload"
        if status == 200 and out is not None and verdict.garbage is None:
            standin._record_activity(body, out, at)  # processed now, however late the answer
        if verdict.delay_s > 0:
            standin._stopping.wait(verdict.delay_s)  # stop() wakes stalled handlers
        standin._record(
            Received(
                at=at,
                mono=mono,
                event_id=low.get(EVENT_ID_HEADER.lower()),
                body=body,
                headers=headers,
                status=status,
                schema_valid=valid,
                schema_errors=errors,
                schema_checked=checked,
                outcome=verdict.outcome,
            )
        )
        if verdict.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        elif verdict.html:
            self._send(status, _html_page(status), verdict.headers, "text/html")
        elif verdict.garbage:
            self._send_garbage(verdict.garbage, verdict.headers)
        else:
            if out is None:
                out = success_body(body) if status < 400 else error_body(status)
            self._send(status, out, verdict.headers)

    def _oauth_token(self, standin: StandIn, raw: bytes) -> None:
        low = {k.lower(): v for k, v in self.headers.items()}
        if low.get("x-app-id") != standin.app_id or low.get("x-app-token") != standin.app_token:
            self._send(401, error_body(401, "Invalid X-App-Id or X-App-Token"))
            return
        status, answer = standin.tokens.issue(raw, standin.app_id)
        self._send(status, answer, {"Cache-Control": "no-store"})

    def _activity(self, standin: StandIn, ref: str, query: str) -> None:
        low = {k.lower(): v for k, v in self.headers.items()}
        authed = (low.get("x-app-id"), low.get("x-app-token")) == (
            standin.app_id, standin.app_token)
        status, body, delay_s = standin._lookup(ref, query, authed)
        if delay_s > 0:
            standin._stopping.wait(delay_s)
        self._send(status, body if status == 200 else {**error_body(status), **(body or {})})

    def _send_garbage(self, kind: str, headers: dict) -> None:
        if kind == "truncated_json":
            self._send(200, b'{"object":"event","type":"trunc', headers, _JSON)
        elif kind == "empty_200":
            self._send(200, b"", headers, _JSON)
        elif kind == "huge":
            self._send(200, _huge_body(), headers, _JSON)
        else:
            self._send(200, _html_page(200), headers, "text/html")

    def _control(self, standin: StandIn, method: str, name: str, raw: bytes) -> None:
        if not ipaddress.ip_address(self.client_address[0]).is_loopback:
            self._send(403, error_body(403, "control endpoints answer loopback only"))
            return
        routes = {
            ("GET", "received"),
            ("GET", "stats"),
            ("GET", "config"),
            ("POST", "config"),
            ("POST", "reset"),
        }
        if (method, name) not in routes:
            known = {n for _, n in routes}
            status = 405 if name in known else 404
            self._send(status, error_body(status, f"No control {method} {name}"))
        elif name == "received":
            fields = ("event_id", "status", "at", "mono", "outcome", "schema_valid",
                      "schema_errors", "body")
            self._send(200, [{k: getattr(r, k) for k in fields} for r in standin.received()])
        elif name == "stats":
            self._send(200, standin.stats())
        elif name == "reset":
            standin.reset()
            self._send(200, {"ok": True})
        elif method == "POST":
            try:
                standin.configure(json.loads(raw or b"{}"))
            except (ValueError, TypeError, KeyError) as exc:
                self._send(400, error_body(400, f"bad config: {exc}"))
                return
            self._send(200, {"ok": True, "config": standin.config()})
        else:
            self._send(200, standin.config())

    def _send(
        self, status: int, body: Any, headers: dict | None = None, ctype: str = _JSON
    ) -> None:
        """Write status line, headers and body in one write (Content-Length always set)."""
        if not isinstance(body, bytes):
            body = body.encode() if isinstance(body, str) else _dumps(body).encode()
        lines = [f"HTTP/1.1 {status} {_phrase(status)}", f"Server: {self.server_version}"]
        extra = dict(headers or {})
        if not any(k.lower() == "content-type" for k in extra):
            lines.append(f"Content-Type: {ctype}")
        lines += [f"{k}: {v}" for k, v in extra.items() if k.lower() != "content-length"]
        lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head if self.command == "HEAD" else head + body)
        except OSError:
            self.close_connection = True
