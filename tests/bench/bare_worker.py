"""The baseline for ``tests/bench/drain.py``: a bare Celery one-task-per-event worker.

What a team would write without this project: one task per event that POSTs it with
``requests`` (a keep-alive session per thread, which is already kinder than ``requests.post``),
Celery's defaults otherwise (early ack, prefetch 4), JSON serializer. Run by the benchmark as
``celery -A tests.bench.bare_worker worker -P threads -c 16``; configured from the environment:
``BENCH_BROKER`` (Redis URL), ``BENCH_QUEUE``, ``BENCH_API`` (the stand-in's base URL),
``BENCH_APP_ID`` and ``BENCH_APP_TOKEN``.
"""

from __future__ import annotations

import os
import threading

import requests
from celery import Celery

TASK_NAME = "bench.bare_deliver"

app = Celery("bare", broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_default_queue=os.environ.get("BENCH_QUEUE", "bare-events"),
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
_URL = os.environ.get("BENCH_API", "http://127.0.0.1:8099").rstrip("/") + "/v1/events"
_HEADERS = {
    "X-App-Id": os.environ.get("BENCH_APP_ID", "test-app"),
    "X-App-Token": os.environ.get("BENCH_APP_TOKEN", "test-token"),
}
_local = threading.local()


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


@app.task(name=TASK_NAME)
def deliver(payload: dict, event_id: str) -> None:
    response = _session().post(
        _URL, json=payload, headers={**_HEADERS, "X-Ingest-Event-Id": event_id}, timeout=(3, 10)
    )
    response.raise_for_status()
