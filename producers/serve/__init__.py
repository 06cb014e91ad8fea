"""``voucherify-ingest serve``: enqueue over HTTP, speaking Voucherify's own ``POST /v1/events``.

Web apps in any language keep their official Voucherify SDK and change only its base URL.

    app.py        the ASGI app: routes, limits, the producer path, answers
    auth.py       ingest credentials (constant time) and the per-caller rate limit
    body.py       media type and JSON depth checks, safe JSON parsing
    pusher.py     micro-batched LPUSH on redis.asyncio
    responses.py  Voucherify's response and error shapes
    runner.py     uvicorn (httptools, uvloop), one or several processes on one socket
"""

from producers.serve.app import IngestApp
from producers.serve.auth import Authenticator, CallerRateLimit, parse_rate
from producers.serve.runner import serve

__all__ = ["IngestApp", "Authenticator", "CallerRateLimit", "parse_rate", "serve"]
