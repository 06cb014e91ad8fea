"""The dashboard's HTTP server: the standard library's threading server and one handler.

Why no framework: three pages, a fragment, two JSON reads and two actions fit in one small
handler, and ``http.server`` adds no dependency. Every request is authenticated (HTTP Basic);
actions are POST only, need a same-origin ``Origin``/``Sec-Fetch-Site`` and the page's CSRF
token, and are refused outright with ``--read-only``.
"""

from __future__ import annotations

import json
import socket
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import structlog

from voucherify_ingest.dashboard import pages
from voucherify_ingest.dashboard.auth import Guard, same_origin
from voucherify_ingest.dashboard.letters import BadFilter, Letters, Query
from voucherify_ingest.dashboard.overview import OverviewReader
from voucherify_ingest.deadletters import DeadLetterQueue
from voucherify_ingest.keys import Keys
from voucherify_ingest.redis_conn import describe_redis_failure
from voucherify_ingest.settings import Settings

MAX_BODY_BYTES = 1 << 20
MAX_IDS = 10_000
ASSET_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Dashboard:
    """What the handler needs: readers, the guard, the mode. One per process."""

    def __init__(self, client: redis.Redis, settings: Settings, *, read_only: bool = False,
                 refresh_s: float = 2.0):
        self.settings = settings
        self.read_only = read_only
        self.refresh_s = refresh_s
        self.guard = Guard(settings.dashboard_credentials)
        self.overview = OverviewReader(client, settings)
        self.dlq = DeadLetterQueue(client, Keys.from_settings(settings))
        self.letters = Letters(self.dlq)
        self.log = structlog.get_logger("voucherify_ingest.dashboard")
        self.assets = {
            f"/assets/{name}": resources.files("voucherify_ingest.dashboard")
            .joinpath("assets", name).read_bytes()
            for name in ("dashboard.js", "dashboard.css")
        }


class _Refused(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "voucherify-ingest-dashboard"
    sys_version = ""
    app: Dashboard  # set on the subclass made by make_server

    # -- plumbing ---------------------------------------------------------------------------

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # requests are not logged line by line; actions and refusals are, by the app

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        started = getattr(self, "started", None)
        if started is not None:  # the time spent building this answer (benchmarks read it)
            self.send_header("Server-Timing",
                             f"app;dur={(time.perf_counter() - started) * 1000:.2f}")
        for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        # Headers and body in one write: two small writes on a kept-alive connection meet
        # Nagle's algorithm and the client's delayed ACK (~40 ms per request).
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(body)
        self.wfile.write(b"".join(self._headers_buffer))
        self._headers_buffer = []

    def _html(self, body: str, status: int = 200, headers: dict | None = None):
        self._send(status, body.encode("utf-8"), "text/html; charset=utf-8", headers)

    def _json(self, value: Any, status: int = 200):
        self._send(status, json.dumps(value, default=str).encode("utf-8"),
                   "application/json; charset=utf-8")

    def _page(self, title: str, body: str, page: str, status: int = 200):
        self._html(pages.layout(title, body, user=self.user, csrf=self.app.guard.csrf_token(
            self.user), read_only=self.app.read_only, page=page), status)

    def _authenticate(self) -> bool:
        user = self.app.guard.user_of(self.headers.get("Authorization"))
        if user is None:
            self._send(401, b"authentication required\n", "text/plain; charset=utf-8",
                       {"WWW-Authenticate": 'Basic realm="voucherify-ingest", charset="UTF-8"'})
            return False
        self.user = user
        return True

    def _dispatch(self, routes):
        self.started = time.perf_counter()
        if not self._authenticate():
            return
        url = urlsplit(self.path)
        self.params = dict(parse_qsl(url.query))
        try:
            for route, handler in routes:  # "/x/*": everything under /x/, else exact
                prefix = route.removesuffix("*")
                if url.path == route or (route.endswith("/*") and url.path.startswith(prefix)):
                    handler(url.path[len(prefix):])
                    return
            self._page("Not found", pages.message_page("Not found", url.path), "", 404)
        except _Refused as exc:
            self.app.log.warning("dashboard_refused", user=self.user, path=url.path,
                                 reason=str(exc))
            self._json({"error": str(exc)}, exc.status)
        except BadFilter as exc:
            self._json({"error": str(exc)}, 400)
        except redis.RedisError as exc:
            self.app.log.error("dashboard_redis_error", error=type(exc).__name__)
            failure = describe_redis_failure(self.app.settings.redis_url, exc)
            text = f"{failure}; the page will work again when it does."
            self._page("Redis unavailable", pages.message_page("Redis unavailable", text), "", 503)

    def do_GET(self):  # noqa: N802 - http.server's name
        self._dispatch([
            ("/", self.overview_page), ("/partials/overview", self.overview_fragment),
            ("/api/overview", self.overview_json), ("/dead-letters", self.dead_letters),
            ("/dead-letters/export.ndjson", self.export), ("/dead-letters/entry/*", self.entry),
            ("/api/dead-letters/count", self.count), ("/assets/*", self.asset),
        ])

    def do_POST(self):  # noqa: N802
        # Read the body before any refusal: left unread, it would be parsed as the next
        # request on this kept-alive connection. Too large or unsized: answer, then hang up.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        self.body = None
        if 0 <= length <= MAX_BODY_BYTES:
            self.body = self.rfile.read(length)
        else:
            self.close_connection = True
        self._dispatch([("/api/dead-letters/replay", lambda _: self.action("replay")),
                        ("/api/dead-letters/purge", lambda _: self.action("purge"))])

    # -- pages ------------------------------------------------------------------------------

    def overview_page(self, _):
        data = self.app.overview.read()
        self._page("Overview", pages.overview_page(data, self.app.refresh_s), "overview")

    def overview_fragment(self, _):
        data = self.app.overview.read()
        self._html(pages.overview_fragment(data), headers={"X-Snapshot-At": data["at"]})

    def overview_json(self, _):
        self._json(self.app.overview.read())

    def dead_letters(self, _):
        fields = {k: v for k, v in self.params.items() if k != "cursor"}
        total = self.app.dlq.count()
        try:
            query = Query.parse(fields)
            listing = self.app.letters.page(query, self.params.get("cursor"))
            error = None
        except (BadFilter, ValueError) as exc:  # a bad filter or a malformed cursor
            query, error = Query(fields={}), str(exc)
            listing = self.app.letters.page(query)
            fields = query.fields
        body = pages.dead_letters_page(listing, fields, total, read_only=self.app.read_only,
                                       error=error)
        self._page("Dead letters", body, "dead-letters", 400 if error else 200)

    def entry(self, rest: str):
        entry_id = unquote(rest)
        entry = self.app.dlq.get(entry_id)
        if entry is None:
            self._page("Not found", pages.message_page(
                "Not found", f"no dead letter {entry_id!r} (replayed or purged?)"),
                "dead-letters", 404)
            return
        self._page(f"Dead letter {entry_id}", pages.entry_page(
            entry, read_only=self.app.read_only), "dead-letters")

    def export(self, _):
        query = Query.parse(self.params)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
        self.send_header("Content-Disposition",
                         f'attachment; filename="dead-letters-{int(time.time())}.ndjson"')
        self.send_header("Connection", "close")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True
        out = _Chunks(self.wfile)
        written = self.app.letters.export(query, out)
        out.flush()
        self.app.log.info("dashboard_export", user=self.user, count=written,
                          filter=query.fields)

    def asset(self, _):
        path = urlsplit(self.path).path
        body = self.app.assets.get(path)
        if body is None:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")
            return
        kind = ASSET_TYPES["." + path.rsplit(".", 1)[1]]
        self._send(200, body, kind, {"Cache-Control": "max-age=300"})

    # -- actions ----------------------------------------------------------------------------

    def _refuse_if_read_only(self):
        if self.app.read_only:
            raise _Refused(HTTPStatus.FORBIDDEN, "this dashboard is read-only")

    def count(self, _):
        self._refuse_if_read_only()
        seen_at = time.time()
        query = Query.parse(self.params)
        n = self.app.letters.count(query, for_replay=self.params.get("for") == "replay")
        self._json({"count": n, "seen_at": seen_at, "filter": query.fields})

    def action(self, name: str):
        self._refuse_if_read_only()
        ok, why = same_origin(self.headers, self.headers.get("Host"))
        if not ok:
            raise _Refused(HTTPStatus.FORBIDDEN, f"cross-origin request refused ({why})")
        if not self.app.guard.csrf_ok(self.user, self.headers.get("X-CSRF-Token")):
            raise _Refused(HTTPStatus.FORBIDDEN, "missing or wrong CSRF token; reload the page")
        body = self._read_json()
        ids = body.get("ids")
        run = self.app.letters.replay if name == "replay" else self.app.letters.purge
        if ids is not None:
            if (not isinstance(ids, list) or not ids or len(ids) > MAX_IDS
                    or not all(isinstance(i, str) for i in ids)):
                raise _Refused(HTTPStatus.BAD_REQUEST, f"ids: a list of 1..{MAX_IDS} event ids")
            touched, scope = run(ids=ids), {"ids": len(ids)}
        else:
            fields = body.get("filter")
            seen_at = body.get("seen_at")
            if not isinstance(fields, dict) or not isinstance(seen_at, (int, float)):
                raise _Refused(HTTPStatus.BAD_REQUEST,
                               "send ids, or filter and seen_at (from the count)")
            query = Query.parse({str(k): str(v) for k, v in fields.items()})
            touched, scope = run(query=query, until=float(seen_at)), {"filter": query.fields}
        self.app.log.info("dashboard_action", user=self.user, action=name, count=touched,
                          **scope)
        self._json({"action": name, "count": touched})

    def _read_json(self) -> dict:
        if self.body is None:
            raise _Refused(HTTPStatus.BAD_REQUEST, "a JSON body of at most 1 MB")
        try:
            body = json.loads(self.body or b"{}")
        except ValueError:
            raise _Refused(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise _Refused(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body


class _Chunks:
    """A text sink that writes the socket in 64 KB pieces (export streams, never buffers all)."""

    def __init__(self, raw):
        self.raw, self.parts, self.size = raw, [], 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        self.parts.append(data)
        self.size += len(data)
        if self.size >= 65536:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.raw.write(b"".join(self.parts))
            self.parts, self.size = [], 0


def make_server(app: Dashboard, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("DashboardHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
