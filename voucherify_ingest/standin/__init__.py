"""A loopback HTTP server that stands in for Voucherify's ``POST /v1/events``.

Tests, benchmarks and the README demo need an API that answers like Voucherify (auth, schema
checks, error bodies, rate-limit headers) and that can be told to misbehave on cue. It is a real
socket server (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive) so the worker's real
``requests`` session, timeouts and connection pool are exercised.

Per request on ``/v1/events`` the first of these that applies decides the answer: a planned
one-shot action, ``set_down``, chaos, a ``refuse_for`` storm, bad credentials (401), the rate
limit (429), a non-JSON or schema-invalid body (400); otherwise 200. Every request is recorded.
Controls work in-process (methods) and over HTTP (``/_standin/*``) for a separate process.

``POST /v1/oauth/token`` issues OAuth tokens (``voucherify_ingest.standin.oauth``: short
lifetime with ``token_lifetime_s``/``--token-lifetime-s``, counted in ``stats()`` as
``tokens_issued``); ``/v1/events`` accepts ``Authorization: Bearer <live token>`` as well as
the ``X-App-Id``/``X-App-Token`` pair.

    python -m voucherify_ingest.standin --port 8099 --app-id X --app-token Y [--latency-ms 20]
"""

from voucherify_ingest.standin.actions import GARBAGE_KINDS, drop, garbage, html, respond, stall
from voucherify_ingest.standin.cli import main
from voucherify_ingest.standin.handler import CONTROL_PREFIX, EVENT_ID_HEADER, EVENTS_PATH
from voucherify_ingest.standin.records import Received
from voucherify_ingest.standin.server import StandIn
from voucherify_ingest.standin.wire import error_body, success_body

__all__ = [
    "StandIn",
    "Received",
    "respond",
    "stall",
    "drop",
    "html",
    "garbage",
    "GARBAGE_KINDS",
    "error_body",
    "success_body",
    "EVENTS_PATH",
    "CONTROL_PREFIX",
    "EVENT_ID_HEADER",
    "main",
]
