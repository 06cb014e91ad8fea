"""A loopback HTTP server that stands in for Voucherify's ``POST /v1/events``.

Tests, benchmarks and the README demo need an API that answers like Voucherify (auth, schema
checks, error bodies, rate-limit headers) and that can be told to misbehave on cue. It is a real
socket server (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive) so the worker's real
``requests`` session, timeouts and connection pool are exercised.

Per request on ``/v1/events`` the first of these that applies decides the answer: a planned
one-shot action, ``set_down``, chaos, a ``refuse_for`` storm, bad credentials (401), the rate
limit (429), a non-JSON or schema-invalid body (400); otherwise 200. Every request is recorded.
Controls work in-process (methods) and over HTTP (``/_standin/*``) for a separate process.

    python -m worker.standin --port 8099 --app-id X --app-token Y [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import ipaddress
import json
import math
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

try:  # optional: without it bodies are parsed but not schema-checked
    import jsonschema
except ImportError:  # pragma: no cover - exercised only without the test extra
    jsonschema = None

EVENTS_PATH = "/v1/events"
CONTROL_PREFIX = "/_standin/"
EVENT_ID_HEADER = "X-Ingest-Event-Id"
MAX_BODY_BYTES = 16 * 1024 * 1024
IDLE_TIMEOUT_S = 30.0
HUGE_BODY_BYTES = 5 * 1024 * 1024
GARBAGE_KINDS = ("truncated_json", "empty_200", "huge", "html_200")
_JSON = "application/json; charset=utf-8"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# Voucherify's error keys/messages; 429 carries only code and message, as the API sends it.
_ERRORS = {
    400: ("invalid_payload", "Invalid payload"),
    401: ("unauthorized", "Unauthorized"),
    402: ("payment_required", "Payment required"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Resource not found"),
    405: ("method_not_allowed", "Method not allowed"),
    409: ("duplicate", "Duplicated resource"),
    413: ("payload_too_large", "Payload too large"),
    500: ("internal_error", "Internal server error"),
    502: ("bad_gateway", "Bad gateway"),
    503: ("service_unavailable", "Service unavailable"),
    504: ("gateway_timeout", "Gateway timeout"),
}


# -- one-shot actions for StandIn.plan(); plain dicts so they travel over HTTP as JSON --------


def respond(status: int, headers: dict[str, str] | None = None, body: Any = None) -> dict:
    """Answer ``status``; error statuses get a Voucherify error body unless ``body`` is given."""
    return {"respond": status, "headers": headers or {}, "body": body}


def stall(seconds: float) -> dict:
    """Sleep ``seconds``, then answer as usual (200 for a good event): beats a read timeout."""
    return {"stall": seconds}


def drop() -> dict:
    """Read the request, then close the connection without answering."""
    return {"drop": True}


def html(status: int = 502) -> dict:
    """Answer a gateway's HTML page instead of JSON."""
    return {"html": status}


def garbage(kind: str) -> dict:
    """A broken 200: ``truncated_json``, ``empty_200``, ``huge`` (~5 MB) or ``html_200``."""
    return {"garbage": kind}


def _check_action(action: Any) -> dict:
    if not isinstance(action, dict):
        raise ValueError(f"a plan action must be a dict, got {action!r}")
    kinds = [k for k in ("respond", "stall", "drop", "html", "garbage") if k in action]
    if len(kinds) != 1:
        raise ValueError(f"a plan action needs exactly one kind, got {action!r}")
    kind, value = kinds[0], action[kinds[0]]
    if kind in ("respond", "html") and not (isinstance(value, int) and 100 <= value <= 599):
        raise ValueError(f"{kind} needs an HTTP status, got {value!r}")
    if kind == "stall" and not (isinstance(value, (int, float)) and value >= 0):
        raise ValueError(f"stall needs seconds >= 0, got {value!r}")
    if kind == "garbage" and value not in GARBAGE_KINDS:
        raise ValueError(f"garbage kind must be one of {GARBAGE_KINDS}, got {value!r}")
    return {"headers": {}, "body": None, **action} if kind == "respond" else dict(action)


# -- schema -----------------------------------------------------------------------------------


def _nullable_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` is not JSON Schema: turn it into an allowed ``null``."""
    if isinstance(node, list):
        return [_nullable_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable_to_jsonschema(v) for k, v in node.items()}
    if node.pop("nullable", False):
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"anyOf": [{"type": "null"}, node]}
    return node


def _inline_refs(node: Any, schemas: dict, seen: tuple[str, ...] = ()) -> Any:
    """Replace local ``$ref``s by their targets: validation runs twice as fast without lookups."""
    if isinstance(node, list):
        return [_inline_refs(item, schemas, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[1]
        if name in seen:
            raise ValueError(f"recursive schema {name} cannot be inlined")
        return _inline_refs(schemas[name], schemas, (*seen, name))  # OpenAPI 3.0: siblings ignored
    return {k: _inline_refs(v, schemas, seen) for k, v in node.items()}


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    """Compile the request-body validator once per process (None without jsonschema)."""
    if jsonschema is None:
        return None
    source = resources.files("worker") / "openapi" / "openapi_events.json"
    spec = json.loads(source.read_text(encoding="utf-8"))
    schemas = _nullable_to_jsonschema(spec["components"]["schemas"])
    schema = _inline_refs(schemas["EventsCreateRequestBody"], schemas)
    cls = jsonschema.Draft7Validator  # OpenAPI 3.0's schema dialect is closest to draft 4-7
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _inspect(raw: bytes) -> tuple[Any, bool, list[str], bool]:
    """Parse and check a body: (body, schema_valid, schema_errors, schema_checked)."""
    validator = _validator()
    try:
        body = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", errors="replace")
        return text, False, ["body is not valid JSON"], validator is not None
    if validator is None:
        ok = isinstance(body, dict)
        return body, ok, [] if ok else ["body is not a JSON object"], False
    errors = sorted(
        f".{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)
    )
    return body, not errors, errors, True


# -- bodies -----------------------------------------------------------------------------------


def _request_id() -> str:
    return "v-" + os.urandom(9).hex()


def error_body(status: int, details: str | None = None) -> dict:
    """A Voucherify-format error object for ``status``."""
    if status == 429:
        return {"code": 429, "message": "Too many requests hit the API too quickly."}
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    key, message = _ERRORS.get(status, (phrase.lower().replace(" ", "_"), phrase))
    body = {"code": status, "key": key, "message": message}
    if details:
        body["details"] = details
    body["request_id"] = _request_id()
    return body


def success_body(request: Any) -> dict:
    """The ``EventsCreateResponseBody`` Voucherify would answer for ``request``."""
    request = request if isinstance(request, dict) else {}
    sent = request.get("customer") if isinstance(request.get("customer"), dict) else {}
    source_id = sent.get("source_id")
    cust_id = sent.get("id")
    if not isinstance(cust_id, str):  # a stable id per source_id, like a created customer's
        digest = hashlib.blake2b(str(source_id).encode(), digest_size=12).hexdigest()
        cust_id = "cust_" + digest
    customer = {"id": cust_id, "source_id": source_id}
    customer.update({k: sent[k] for k in ("name", "email", "metadata") if k in sent})
    customer["object"] = "customer"
    metadata = request.get("metadata")
    return {
        "object": "event",
        "type": request.get("event"),
        "customer": customer,
        "referral": None,
        "loyalty": None,
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


def _html_page(status: int) -> bytes:
    title = f"{status} {_phrase(status)}"
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>".encode()


@functools.lru_cache(maxsize=1)
def _huge_body() -> bytes:
    head = b'{"object":"event","type":"huge","metadata":{"padding":"'
    return head + b"x" * HUGE_BODY_BYTES + b'"}}'


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


# -- records and verdicts ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """One request received on ``/v1/events``; ``status`` 0 means the connection was dropped."""

    at: float
    mono: float
    event_id: str | None
    body: Any
    headers: dict[str, str]
    status: int
    schema_valid: bool
    schema_errors: list[str] = field(default_factory=list)
    schema_checked: bool = True
    outcome: str = "ok"


@dataclass(slots=True)
class _Verdict:
    """What ``_decide`` settled: an answer (``status`` set), a drop, or the default path."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay_s: float = 0.0
    outcome: str = "ok"
    drop: bool = False
    html: bool = False
    garbage: str | None = None


# -- the server -------------------------------------------------------------------------------


class StandIn:
    """A Voucherify stand-in on loopback; ``with StandIn() as api: ... api.url``."""

    def __init__(
        self,
        app_id: str = "test-app",
        app_token: str = "test-token",  # noqa: S107 - a stand-in's test credential
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
    ):
        self.app_id, self.app_token = app_id, app_token
        self.host, self.port, self.seed = host, port, seed
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ctl = threading.Lock()
        self._cond = threading.Condition()
        self._reset_state()

    def _reset_state(self) -> None:
        with self._ctl:
            self._plan: collections.deque[dict] = collections.deque()
            self._down: tuple[int, dict] | None = None
            self._latency_s = 0.0
            self._chaos: dict | None = None
            self._rng = random.Random(self.seed)
            self._rate: dict | None = None
            self._tat = 0.0  # GCRA theoretical arrival time, on time.monotonic()
            self._refuse: tuple[float, int | None] | None = None
            self._too_many = 0
        with self._cond:
            self._records: list[Received] = []
            self._delivered_n = 0

    # -- lifecycle --

    def start(self) -> StandIn:
        """Bind and serve in a daemon thread; the port is known as soon as this returns."""
        if self._server is not None:
            raise RuntimeError("StandIn already started")
        server_cls = _Server6 if ":" in self.host else _Server
        self._stopping.clear()
        self._server = server_cls((self.host, self.port), _Handler)
        self._server.standin = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"standin:{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, cut open connections, wake stalled handlers and wait for them."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections(time.monotonic() + timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> StandIn:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("StandIn is not started")
        host, port = self._server.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # -- records --

    def _record(self, rec: Received) -> None:
        with self._cond:
            self._records.append(rec)
            if rec.status == 200:
                self._delivered_n += 1
            self._cond.notify_all()

    def received(self) -> list[Received]:
        with self._cond:
            return list(self._records)

    def delivered(self) -> list[Received]:
        return [r for r in self.received() if r.status == 200]

    def delivered_ids(self) -> collections.Counter:
        """Event ids (``X-Ingest-Event-Id``) answered 200; a count above 1 is a duplicate."""
        return collections.Counter(r.event_id for r in self.delivered() if r.event_id is not None)

    def wait_for_delivered(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._delivered_n >= n, timeout)

    def wait_for_received(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self._records) >= n, timeout)

    def too_many_count(self) -> int:
        """How many 429s the rate limit (``set_rate_limit``) answered."""
        with self._ctl:
            return self._too_many

    def stats(self) -> dict:
        records = self.received()
        ids = collections.Counter(r.event_id for r in records if r.status == 200 and r.event_id)
        return {
            "total": len(records),
            "delivered": sum(1 for r in records if r.status == 200),
            "by_status": dict(collections.Counter(str(r.status) for r in records)),
            "duplicates": sum(n - 1 for n in ids.values() if n > 1),
            "duplicate_ids": sum(1 for n in ids.values() if n > 1),
            "schema_invalid": sum(1 for r in records if not r.schema_valid),
            "too_many": self.too_many_count(),
        }

    def reset(self) -> None:
        """Forget records and counters and undo every control (plan, down, chaos, limits)."""
        self._reset_state()

    # -- controls --

    def plan(self, *actions: dict) -> None:
        """Queue one-shot actions, consumed one per request before the default behaviour."""
        checked = [_check_action(a) for a in actions]
        with self._ctl:
            self._plan.extend(checked)

    def set_down(self, status: int = 503, headers: dict[str, str] | None = None) -> None:
        with self._ctl:
            self._down = (status, dict(headers or {}))

    def set_up(self) -> None:
        with self._ctl:
            self._down = None

    def set_latency(self, seconds: float) -> None:
        with self._ctl:
            self._latency_s = max(0.0, float(seconds))

    def set_chaos(
        self,
        p_503: float = 0.0,
        p_stall: float = 0.0,
        p_drop: float = 0.0,
        stall_s: float = 3.0,
        p_429: float = 0.0,
        retry_after_s: int = 1,
    ) -> None:
        """Random faults from a ``random.Random(seed)``; all probabilities 0 turns chaos off."""
        if p_503 + p_stall + p_drop + p_429 > 1.0:
            raise ValueError("chaos probabilities add up to more than 1")
        chaos = {
            "p_503": p_503,
            "p_stall": p_stall,
            "p_drop": p_drop,
            "stall_s": stall_s,
            "p_429": p_429,
            "retry_after_s": retry_after_s,
        }
        with self._ctl:
            self._chaos = chaos if p_503 + p_stall + p_drop + p_429 > 0 else None

    def set_rate_limit(
        self, per_second: float | None, burst: int = 1, retry_after_s: int | None = None
    ) -> None:
        """Enforce ``per_second`` with a bucket of ``burst`` (GCRA); None or 0 disables."""
        with self._ctl:
            if not per_second:
                self._rate = None
                return
            self._rate = {
                "per_second": float(per_second),
                "burst": max(1, int(burst)),
                "retry_after_s": retry_after_s,
            }
            self._tat = 0.0

    def refuse_for(self, seconds: float, retry_after_s: int | None = None) -> None:
        """A 429 storm: answer everything 429 with ``Retry-After`` for ``seconds`` from now."""
        with self._ctl:
            self._refuse = (time.monotonic() + seconds, retry_after_s)

    def config(self) -> dict:
        """The current controls, as JSON-ready data."""
        with self._ctl:
            refuse_s = max(0.0, self._refuse[0] - time.monotonic()) if self._refuse else 0.0
            return {
                "down": {"status": self._down[0], "headers": self._down[1]} if self._down else None,
                "latency_s": self._latency_s,
                "chaos": self._chaos,
                "rate_limit": self._rate,
                "refusing_for_s": refuse_s,
                "plan": list(self._plan),
            }

    def configure(self, changes: dict) -> None:
        """Apply a ``POST /_standin/config`` document; unknown keys refuse the whole document."""
        handlers = {
            "down": lambda v: (
                self.set_up()
                if v is False or v is None
                else (
                    self.set_down(**v)
                    if isinstance(v, dict)
                    else self.set_down()
                    if v is True
                    else self.set_down(int(v))
                )
            ),
            "up": lambda v: self.set_up() if v else None,
            "latency_s": self.set_latency,
            "chaos": lambda v: self.set_chaos(**(v or {})),
            "rate_limit": lambda v: self.set_rate_limit(**v) if v else self.set_rate_limit(None),
            "refuse_for": lambda v: self.refuse_for(**v),
            "plan": lambda v: self.plan(*v),
        }
        if not isinstance(changes, dict) or set(changes) - set(handlers):
            raise ValueError(f"config keys must be among {sorted(handlers)}")
        for key, value in changes.items():
            handlers[key](value)

    # -- the decision, under one lock --

    def _decide(self, authed: bool) -> _Verdict:
        now = time.monotonic()
        with self._ctl:
            verdict = _Verdict(delay_s=self._latency_s)
            action = self._plan.popleft() if self._plan else None
            if action is not None:
                if "stall" not in action:
                    return _planned(action, verdict)
                verdict.delay_s += action["stall"]
                verdict.outcome = "stalled"
            if self._down is not None:
                verdict.status, verdict.headers = self._down[0], dict(self._down[1])
                verdict.outcome = "down"
                return verdict
            if self._chaos is not None and self._roll_chaos(verdict):
                return verdict
            if self._refuse is not None:
                until, retry_after = self._refuse
                if until > now:
                    wait = until - now
                    verdict.status, verdict.outcome = 429, "refused"
                    verdict.headers = _too_many_headers(wait, retry_after, None)
                    return verdict
                self._refuse = None
            if not authed:
                verdict.status, verdict.outcome = 401, "unauthorized"
                return verdict
            if self._rate is not None:
                self._apply_rate(now, verdict)
            return verdict

    def _roll_chaos(self, verdict: _Verdict) -> bool:
        c, roll = self._chaos, self._rng.random()
        if roll < c["p_503"]:
            verdict.status, verdict.outcome = 503, "chaos_503"
        elif roll < c["p_503"] + c["p_429"]:
            verdict.status, verdict.outcome = 429, "chaos_429"
            verdict.headers = {"Retry-After": str(max(1, int(c["retry_after_s"])))}
        elif roll < c["p_503"] + c["p_429"] + c["p_drop"]:
            verdict.drop, verdict.outcome = True, "chaos_drop"
        elif roll < c["p_503"] + c["p_429"] + c["p_drop"] + c["p_stall"]:
            verdict.delay_s += c["stall_s"]
            verdict.outcome = "chaos_stall"
            return False
        else:
            return False
        return True

    def _apply_rate(self, now: float, verdict: _Verdict) -> None:
        rate = self._rate
        interval = 1.0 / rate["per_second"]
        burst = rate["burst"]
        tat = max(self._tat, now)
        allowed_at = tat - interval * (burst - 1)
        if allowed_at > now:
            self._too_many += 1
            verdict.status, verdict.outcome = 429, "rate_limited"
            verdict.headers = _too_many_headers(allowed_at - now, rate["retry_after_s"], burst)
            return
        self._tat = tat + interval
        remaining = int((interval * burst - (self._tat - now)) / interval + 1e-9)
        verdict.headers = {
            "X-Rate-Limit-Limit": str(burst),
            "X-Rate-Limit-Remaining": str(max(0, remaining)),
        }


def _too_many_headers(wait_s: float, retry_after_s: int | None, limit: int | None) -> dict:
    retry_after = max(1, int(retry_after_s) if retry_after_s else math.ceil(wait_s))
    headers = {
        "Retry-After": str(retry_after),
        "X-Rate-Limit-Remaining": "0",
        "X-Rate-Limit-Retry": str(math.ceil(time.time() + wait_s)),
    }
    if limit is not None:
        headers["X-Rate-Limit-Limit"] = str(limit)
    return headers


def _planned(action: dict, verdict: _Verdict) -> _Verdict:
    verdict.outcome = "planned"
    if "drop" in action:
        verdict.drop = True
    elif "html" in action:
        verdict.status, verdict.html = action["html"], True
    elif "garbage" in action:
        verdict.status, verdict.garbage = 200, action["garbage"]
    else:
        verdict.status, verdict.body = action["respond"], action["body"]
        verdict.headers = dict(action["headers"])
    return verdict


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
        path = self.path.split("?", 1)[0]
        standin = self.server.standin
        if path == EVENTS_PATH:
            if method == "POST":
                self._events(standin, raw)
            else:
                self._send(405, error_body(405, f"{method} is not allowed"), {"Allow": "POST"})
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
        verdict = standin._decide(app_id == standin.app_id and token == standin.app_token)
        if verdict.delay_s > 0:
            standin._stopping.wait(verdict.delay_s)  # stop() wakes stalled handlers
        status, out = verdict.status, verdict.body
        if verdict.drop:
            status = 0
        elif verdict.outcome == "unauthorized":
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


def main(argv: list[str] | None = None) -> int:
    """Run a stand-in in the foreground until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.standin",
        description="A local stand-in for Voucherify's POST /v1/events.",
        epilog="example: python -m worker.standin --port 8099 --app-id X --app-token Y",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port")
    parser.add_argument("--app-id", default="test-app")
    parser.add_argument("--app-token", default="test-token")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="seed for chaos faults")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    standin = StandIn(args.app_id, args.app_token, host=args.host, port=args.port, seed=args.seed)
    try:
        standin.start()
    except OSError as exc:
        parser.exit(2, f"standin: cannot listen on {args.host}:{args.port}: {exc}\n")
    standin.set_latency(args.latency_ms / 1000)
    print(f"standin listening on {standin.url}", flush=True)
    try:
        stop.wait()
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
