"""FastAPI: enqueue from an ``async def`` endpoint without blocking the event loop.

``enqueue_event`` is synchronous: a few tenths of a millisecond when Redis answers, but up to
``VOUCHERIFY_REDIS_TIMEOUT_S`` (1 s) when it does not, plus an fsync while the spool is in use.
Called inline, that second would freeze every request this process serves. So the endpoint
runs it in a small thread pool of its own (``loop.run_in_executor``): a Redis outage can tie
up at most ``ENQUEUE_THREADS`` threads, never the threadpool FastAPI shares with sync
endpoints. Measured against ``anyio.to_thread.run_sync`` and ``redis.asyncio``
(docs/web-apps.md), this hop was the cheapest, and unlike ``redis.asyncio`` it keeps the
producer's spool. Run it with::

    REDIS_URL=redis://localhost:6379/0 uvicorn --app-dir ops/examples fastapi_app:app
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from producers import BrokerUnavailable, InvalidEvent, Producer, SpoolFull, get_producer

ENQUEUE_THREADS = 16


class SignUp(BaseModel):
    user_id: str
    email: str | None = None
    plan: str = "free"


def create_app(producer: Producer | None = None) -> FastAPI:
    pool = ThreadPoolExecutor(max_workers=ENQUEUE_THREADS, thread_name_prefix="enqueue")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        pool.shutdown(wait=True)  # let enqueues in flight finish

    app = FastAPI(title="voucherify-ingest FastAPI example", lifespan=lifespan)

    async def enqueue(payload: dict) -> str:
        call = functools.partial((producer or get_producer()).enqueue_event, payload)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    @app.post("/signups", status_code=202)
    async def sign_up(body: SignUp) -> dict:
        # ... create the account first ...
        customer = {"source_id": body.user_id}
        if body.email:
            customer["email"] = body.email
        try:
            event_id = await enqueue(
                {"event": "signed_up", "customer": customer, "metadata": {"plan": body.plan}}
            )
        except InvalidEvent as exc:
            raise HTTPException(status_code=422, detail=exc.messages) from None
        except (BrokerUnavailable, SpoolFull):
            raise HTTPException(
                status_code=503, detail="event queue unavailable, try again",
                headers={"Retry-After": "5"},
            ) from None
        return {"event_id": event_id}

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True}

    return app


app = create_app()
