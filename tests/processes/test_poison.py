"""Poison on the queue and garbage from the API, against a real worker process.

Messages are written straight into the ingest queue (``LPUSH``, as a buggy or hostile producer
would): not JSON, invalid UTF-8, JSON that is no kombu message, a pickle (whose unpickling
would create a marker file), a body that does not decode, wrong task arguments, a valid
envelope with an invalid event, an unknown task name, a bare envelope. The worker must keep
running, never unpickle anything, deliver the good events around them, and dead-letter with
reason ``invalid`` everything that carries an event (event id and payload kept) and the rest as
one entry each. Its log must not carry the bodies.

Garbage answers from the API (HTML pages, truncated JSON, empty 200, a 5 MB body) must be
classified, logged in one bounded line per attempt, and must not crash the worker.
"""

from __future__ import annotations

import base64
import json
import pickle
import time
from pathlib import Path

import pytest

from producers import Producer
from tests.support.pipeline import make_env, worker_argv
from tests.support.procs import ManagedProcess
from tests.support.redis_server import delete_namespace_keys
from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.keys import Keys
from voucherify_ingest.messages import DELIVER_BATCH, DELIVER_EVENT, build_message, make_envelope
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn, garbage, html, respond

pytestmark = pytest.mark.e2e

SECRET_EMAIL = "poison-customer@example.com"  # must never show up in the worker's log
MAX_LOG_LINE_BYTES = 10_000


def _good(n: int) -> dict:
    return {"event": "good", "customer": {"source_id": f"good-{n}"}, "metadata": {"n": n}}


def _event(tag: str) -> dict:
    return {"event": "poisoned", "customer": {"source_id": tag, "email": SECRET_EMAIL}}


class _Marker:
    """Unpickling this creates a file: proof that a pickle was (or was not) deserialised."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _message(queue: str, *, body: bytes, content_type: str = "application/json",
             task: str = DELIVER_EVENT, task_id: str | None = None) -> bytes:
    message = json.loads(build_message(task, [], queue, task_id=task_id))
    message["body"] = base64.b64encode(body).decode()
    message["content-type"] = content_type
    return json.dumps(message).encode()


def _celery_body(args, kwargs=None) -> bytes:
    return json.dumps([args, kwargs or {}, {}]).encode()


def _poisons(queue: str, marker: Path) -> dict[str, dict]:
    """name -> {"raw": bytes to LPUSH, "event_id": id it carries (or None), "why": text}."""
    unknown = make_envelope(_event("unknown-task"))
    invalid = make_envelope({"event": "", "customer": {"email": SECRET_EMAIL}})
    bare = make_envelope(_event("bare-envelope"))
    batch = [make_envelope(_event("batch-1")), make_envelope(_event("batch-2"))]
    return {
        "not json": {"raw": b"this is not json " + SECRET_EMAIL.encode(), "event_id": None,
                     "why": "not JSON"},
        "invalid utf-8": {"raw": b"\xff\xfe\xfa{" + SECRET_EMAIL.encode(), "event_id": None,
                          "why": "not JSON"},
        "json, not a message": {"raw": json.dumps([1, SECRET_EMAIL]).encode(), "event_id": None,
                                "why": "not a kombu message"},
        "bare envelope": {"raw": json.dumps(bare).encode(), "event_id": bare["id"],
                          "why": "not a kombu message"},
        "pickle": {"raw": _message(queue, body=pickle.dumps(_Marker(str(marker))),
                                   content_type="application/x-python-serialize"),
                   "event_id": None, "why": "pickle"},
        "body not json": {"raw": _message(queue, body=b"{not json " + SECRET_EMAIL.encode()),
                          "event_id": None, "why": "does not decode"},
        "args not a list": {"raw": _message(queue, body=_celery_body(SECRET_EMAIL)),
                            "event_id": None, "why": "args must be a list"},
        "body a number": {"raw": _message(queue, body=b"5"), "event_id": None,
                          "why": "[args, kwargs, embed]"},
        "two args": {"raw": _message(queue, body=_celery_body([bare, "extra"])),
                     "event_id": None, "why": "invalid event"},
        "invalid event": {"raw": _message(queue, body=_celery_body([invalid])),
                          "event_id": invalid["id"], "why": "invalid event"},
        "unknown task": {"raw": _message(queue, body=_celery_body([unknown]),
                                         task="voucherify.nope", task_id=unknown["id"]),
                         "event_id": unknown["id"], "why": "unknown task"},
        "unknown task, batch": {"raw": _message(queue, body=_celery_body([batch]),
                                                task="other.batch"),
                                "event_id": batch[1]["id"], "also": batch[0]["id"],
                                "why": "unknown task"},
        "batch not a list": {"raw": _message(queue, body=_celery_body([bare]),
                                             task=DELIVER_BATCH),
                             "event_id": None, "why": "batch must be a list"},
    }


@pytest.fixture(scope="module")
def poison_run(redis_server, tmp_path_factory):
    """One worker, all poisons between good events; returns what happened."""
    tmp = tmp_path_factory.mktemp("poison")
    namespace = "tpoison" + str(time.monotonic_ns())[-6:]
    marker = tmp / "UNPICKLED"
    api = StandIn("test-app", "test-token-s3cr3t-value").start()
    env = make_env(redis_server.url, namespace, api.url)
    settings = Settings.from_env(env)
    producer = Producer(settings)
    client = redis_server.client()
    proc = None
    try:
        poisons = _poisons(settings.queue, marker)
        good_ids = producer.enqueue_events([_good(n) for n in range(5)])
        for poison in poisons.values():
            client.lpush(settings.queue, poison["raw"])
        good_ids += producer.enqueue_events([_good(n) for n in range(5, 10)])
        proc = ManagedProcess(worker_argv(2), env=env, name="poison-worker", log_dir=tmp).start()
        proc.wait_for_output('"worker_ready"', timeout=60)
        expected_entries = len(poisons) + 1  # the unknown batch carries two events
        dlq = DeadLetterStore(client, Keys.from_settings(settings))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            dlq.count() >= expected_entries and api.wait_for_delivered(10, timeout=0)
        ):
            time.sleep(0.2)
        time.sleep(0.5)
        entries = [dlq.get(i) for i in dlq.ids(limit=1000)]
        yield {
            "poisons": poisons, "entries": entries, "good_ids": good_ids, "api": api,
            "proc": proc, "marker": marker, "client": client, "settings": settings,
            "log": proc.output(),
        }
    finally:
        if proc is not None:
            proc.terminate()
        producer.close()
        api.stop()
        delete_namespace_keys(client, namespace)
        client.close()


def _entry_for(run, name: str) -> dict:
    poison = run["poisons"][name]
    if poison["event_id"]:
        matches = [e for e in run["entries"] if e["id"] == poison["event_id"]]
    else:
        matches = [
            e for e in run["entries"]
            if e["id"].startswith("invalid-") and poison["why"] in _why(e)
        ]
    assert matches, f"no dead letter for {name!r}; have {[_why(e) for e in run['entries']]}"
    return matches[0]


def _why(entry: dict) -> str:
    return f"{entry['error']['message']} {entry['error']['details']}"


def test_worker_keeps_running_and_delivers_around_the_poison(poison_run):
    assert poison_run["proc"].is_running(), poison_run["proc"].tail()
    delivered = poison_run["api"].delivered_ids()
    assert set(poison_run["good_ids"]) <= set(delivered)
    assert max(delivered.values()) == 1
    assert "Unrecoverable error" not in poison_run["log"]


def test_nothing_is_left_on_the_queue_or_unacked(poison_run):
    client, settings = poison_run["client"], poison_run["settings"]
    keys = Keys.from_settings(settings)
    assert client.llen(settings.queue) == 0
    assert client.hlen(keys.unacked) == 0


@pytest.mark.parametrize("name", list(_poisons("q", Path("/nonexistent"))))
def test_each_poison_is_dead_lettered_as_invalid(poison_run, name):
    entry = _entry_for(poison_run, name)
    assert entry["reason"] == "invalid"
    poison = poison_run["poisons"][name]
    if poison["event_id"]:
        assert entry["payload"]["event"] in ("poisoned", ""), entry  # the event itself is kept
    if "also" in poison:
        assert any(e["id"] == poison["also"] for e in poison_run["entries"])


def test_bare_envelope_keeps_event_id_and_payload(poison_run):
    entry = _entry_for(poison_run, "bare envelope")
    assert entry["payload"]["customer"]["source_id"] == "bare-envelope"


def test_pickle_is_never_deserialised(poison_run):
    assert not poison_run["marker"].exists(), "a pickle payload was unpickled"
    entry = _entry_for(poison_run, "pickle")
    assert entry["payload"] is None, "no part of a pickle body is kept"
    assert "application/x-python-serialize" in entry["error"]["details"]


def test_log_carries_no_bodies_and_one_bounded_line_per_poison(poison_run):
    log = poison_run["log"]
    assert SECRET_EMAIL not in log
    lines = [line for line in log.splitlines() if '"poison_message"' in line]
    assert len(lines) == len(poison_run["poisons"]) - 3  # three poisons reach the task itself
    assert all(len(line.encode()) < MAX_LOG_LINE_BYTES for line in log.splitlines())


# -- garbage answers from the API -------------------------------------------------------------


def test_garbage_answers_are_classified_without_crash_or_flood(standin, producer, start_worker,
                                                                pipeline_settings, redis_client):
    # Retryable one last, so its retry takes the default 200 rather than a planned action.
    standin.plan(
        garbage("truncated_json"), garbage("empty_200"), garbage("huge"), garbage("html_200"),
        html(400), respond(400, body={"code": 400, "message": "m" * 50_000}), html(502),
    )
    ids = [producer.enqueue_event(_good(n)) for n in range(7)]
    worker = start_worker(concurrency=1)
    dlq = DeadLetterStore(redis_client, Keys.from_settings(pipeline_settings))
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not (
        len(standin.delivered_ids()) >= 5 and dlq.count() >= 2
    ):
        time.sleep(0.1)
    time.sleep(1.0)
    delivered = standin.delivered_ids()
    # A 200 is a delivery whatever its body: retrying would send the event twice.
    assert set(ids[:4]) | {ids[6]} == set(delivered), standin.stats()
    assert max(delivered.values()) == 1
    html_400, huge_400 = dlq.get(ids[4]), dlq.get(ids[5])
    assert html_400["reason"] == huge_400["reason"] == "rejected"
    assert html_400["status"] == 400 and "<html>" in html_400["error"]["body_excerpt"]
    assert len(huge_400["error"]["body_excerpt"]) <= 2000
    statuses = [r.status for r in standin.received() if r.event_id == ids[6]]
    assert statuses == [502, 200]  # the gateway page was retried
    assert worker.is_running()
    log = worker.output()
    assert all(len(line.encode()) < MAX_LOG_LINE_BYTES for line in log.splitlines())
    for event_id, attempts in zip(ids, [1, 1, 1, 1, 1, 1, 2], strict=True):
        lines = [line for line in log.splitlines() if event_id in line]
        assert len(lines) == attempts, lines
