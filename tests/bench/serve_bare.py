"""The benchmark's baseline: the same server stack answering a bare 200 without enqueueing.

Same runner (uvicorn, httptools, uvloop, the same socket sharing and ``--workers``), same
route; the app reads the body and answers a constant ``EventsCreateResponseBody``-sized 200:
no credentials check, no JSON parsing, no validation, no Redis.

``--no-redis`` runs the real ``IngestApp`` with a pusher that stores nothing: everything but
the ``LPUSH``, to show where the time goes (it is never a goal's baseline).

    python -m tests.bench.serve_bare --port 0 --workers 2 [--no-redis]
"""

from __future__ import annotations

import argparse
import sys

from worker.logs import configure_logging
from worker.serve.app import IngestApp
from worker.serve.pusher import BatchPusher, make_async_redis
from worker.serve.responses import json_headers
from worker.serve.runner import serve
from worker.settings import Settings

_BODY = (b'{"object":"event","type":"order_paid","customer":{"source_id":"user-1",'
         b'"object":"customer"},"referral":null,"loyalty":null,"metadata":{}}')
_HEADERS = json_headers(_BODY, (b"x-ingest-event-id", b"00000000-0000-4000-8000-000000000000"))


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
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings, stream=sys.stdout)
    make_app = (lambda: _no_redis_app(settings)) if args.no_redis else (lambda: bare_app)
    serve(make_app, settings, host=args.host, port=args.port, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
