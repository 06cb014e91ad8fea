"""The benchmark's baseline: the same server stack answering a bare 200 without enqueueing.

Same runner (uvicorn, httptools, uvloop, the same socket sharing and ``--workers``), same
route; the app reads the body and answers a constant ``EventsCreateResponseBody``-sized 200:
no credentials check, no JSON parsing, no validation, no Redis.

Two diagnostics show where the time goes (neither is ever a goal's baseline):

- ``--no-redis`` runs the real ``IngestApp`` with a pusher that stores nothing: everything but
  the ``LPUSH``.
- ``--least-work`` does the least any enqueueing endpoint must do beyond the bare 200: read
  the JSON, give it an id and a time, build its Celery message and let the event loop turn
  once (where the real app waits for Redis to confirm), then answer. No credentials check, no
  validation, no Redis: a ceiling for the enqueueing app's rate on this stack.

    python -m tests.bench.serve_bare --port 0 --workers 2 [--no-redis | --least-work]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson

from producers.serve.app import IngestApp
from producers.serve.pusher import BatchPusher, make_async_redis
from producers.serve.responses import JSON_TYPE, json_headers
from producers.serve.runner import serve
from voucherify_ingest.logs import configure_logging
from voucherify_ingest.messages import event_message, make_envelope
from voucherify_ingest.settings import Settings

_BODY = (b'{"object":"event","type":"order_paid","customer":{"source_id":"user-1",'
         b'"object":"customer"},"referral":null,"loyalty":null,"metadata":{}}')
_EVENT_ID = (b"x-ingest-event-id", b"00000000-0000-4000-8000-000000000000")
_HEADERS = json_headers(_BODY, _EVENT_ID)
_HEADERS_NO_LENGTH = [(b"content-type", JSON_TYPE), _EVENT_ID]


async def bare_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


async def least_work_app(scope, receive, send):
    if scope["type"] == "lifespan":
        await bare_app(scope, receive, send)
        return
    message = await receive()
    payload = orjson.loads(message["body"])
    event_message(make_envelope(payload), "bench")
    await asyncio.sleep(0)
    body = orjson.dumps({"object": "event", "type": payload.get("event"),
                         "customer": payload.get("customer"), "referral": None, "loyalty": None,
                         "metadata": payload.get("metadata", {})})
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS_NO_LENGTH
                + [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


class _NullPusher(BatchPusher):
    """Answers every push at once and stores nothing (benchmark diagnostics only)."""

    async def push(self, message: str) -> None:
        return None


def _no_redis_app(settings: Settings):
    return IngestApp(settings, pusher=_NullPusher(make_async_redis(settings), settings.queue))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.serve_bare")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-redis", action="store_true")
    mode.add_argument("--least-work", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings, stream=sys.stdout)
    if args.no_redis:
        make_app = lambda: _no_redis_app(settings)  # noqa: E731
    else:
        app = least_work_app if args.least_work else bare_app
        make_app = lambda: app  # noqa: E731
    serve(make_app, settings, host=args.host, port=args.port, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
