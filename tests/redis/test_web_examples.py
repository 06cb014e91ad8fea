"""The Flask, Django and FastAPI examples in ops/examples, run for real through each framework's
test client against a real Redis; assertions are on the Celery message that landed there."""

from __future__ import annotations

import base64
import importlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from producers import Producer, set_producer
from voucherify_ingest.messages import DELIVER_EVENT
from voucherify_ingest.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "ops" / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


def _messages(client, queue: str) -> list[dict]:
    """Decode each kombu message on the queue (oldest first) into headers + envelope."""
    decoded = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        decoded.append({"task": message["headers"]["task"], "task_id": message["headers"]["id"],
                        "envelope": args[0], "kwargs": kwargs})
    return decoded


def _settings(url: str, namespace: str, **overrides) -> Settings:
    return Settings.from_env({}, redis_url=url, queue=f"{namespace}-events",
                             key_prefix=namespace, **overrides)


@pytest.fixture
def app_producer(redis_url, namespace):
    producer = Producer(_settings(redis_url, namespace))
    yield producer
    producer.close()


# -- Flask ----------------------------------------------------------------------------------


def test_flask_view_enqueues_a_message_a_worker_can_take(app_producer, redis_client):
    flask_app = importlib.import_module("flask_app")
    client = flask_app.create_app(app_producer).test_client()
    response = client.post("/orders/o-17/paid",
                           json={"customer_id": "user-42", "email": "ann@example.com",
                                 "total": 49.9})
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json() == {"event_id": "order-o-17-paid"}
    (message,) = _messages(redis_client, app_producer.queue)
    assert message["task"] == DELIVER_EVENT
    assert message["task_id"] == message["envelope"]["id"] == "order-o-17-paid"
    assert message["envelope"]["payload"] == {
        "event": "order_paid",
        "customer": {"source_id": "user-42", "email": "ann@example.com"},
        "metadata": {"order_id": "o-17", "total": 49.9},
    }
    assert message["envelope"]["attempt"] == 0


def test_flask_view_answers_400_with_field_messages_and_enqueues_nothing(
    app_producer, redis_client
):
    client = importlib.import_module("flask_app").create_app(app_producer).test_client()
    response = client.post("/orders/o-18/paid", json={"total": 10})
    assert response.status_code == 400
    errors = response.get_json()["errors"]
    assert errors == {"customer": {"source_id": ["Field may not be null."]}}
    assert redis_client.llen(app_producer.queue) == 0


def test_flask_view_during_an_outage_spools_then_the_event_reaches_redis(
    private_redis, namespace, tmp_path
):
    producer = Producer(_settings(private_redis.url, namespace, spool_dir=str(tmp_path),
                                  redis_timeout_s=0.5))
    client = importlib.import_module("flask_app").create_app(producer).test_client()
    private_redis.kill()
    started = time.monotonic()
    response = client.post("/orders/o-19/paid", json={"customer_id": "user-1", "total": 5})
    assert response.status_code == 202 and time.monotonic() - started < 1.0
    assert len(list(tmp_path.glob("*.seg"))) == 1
    redis_client = private_redis.start().client()
    deadline = time.monotonic() + 15
    while redis_client.llen(producer.queue) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    (message,) = _messages(redis_client, producer.queue)
    assert message["envelope"]["id"] == "order-o-19-paid"
    producer.close()
    redis_client.close()


def test_flask_view_answers_503_when_redis_is_down_and_the_spool_is_off(
    private_redis, namespace
):
    producer = Producer(_settings(private_redis.url, namespace, redis_timeout_s=0.5))
    client = importlib.import_module("flask_app").create_app(producer).test_client()
    private_redis.kill()
    response = client.post("/orders/o-20/paid", json={"customer_id": "user-1", "total": 5})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    producer.close()


# -- Django ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_setup(tmp_path_factory):
    os.environ["DJANGO_SETTINGS_MODULE"] = "django_app.settings"
    os.environ["DJANGO_APP_DB"] = str(tmp_path_factory.mktemp("django") / "orders.sqlite3")
    import django
    from django.core.management import call_command

    try:
        django.setup()  # reads the settings now, once for this process
    finally:
        # Child processes (Celery workers in other tests) must not inherit them: Celery would
        # try to load this Django project.
        del os.environ["DJANGO_SETTINGS_MODULE"], os.environ["DJANGO_APP_DB"]
    call_command("migrate", run_syncdb=True, verbosity=0)
    from django_app.models import Order

    return Order


@pytest.fixture
def django_client(django_setup, app_producer):
    from django.test import Client

    django_setup.objects.all().delete()
    set_producer(app_producer)  # what enqueue_event()/get_producer() use in the views
    try:
        yield Client()
    finally:
        set_producer(None)


def test_django_enqueues_after_the_order_commits(django_client, django_setup, app_producer,
                                                 redis_client):
    response = django_client.post("/orders/", data=json.dumps(
        {"customer_id": "user-7", "total": "19.99"}), content_type="application/json")
    assert response.status_code == 201, response.content
    body = response.json()
    order = django_setup.objects.get(pk=body["order_id"])
    assert order.event_id == body["event_id"] == f"order-{order.pk}-paid"
    (message,) = _messages(redis_client, app_producer.queue)
    assert message["envelope"]["id"] == order.event_id
    assert message["envelope"]["payload"] == {
        "event": "order_paid", "customer": {"source_id": "user-7"},
        "metadata": {"order_id": order.pk, "total": 19.99},
    }


def test_django_rolled_back_order_sends_no_event(django_client, django_setup, app_producer,
                                                 redis_client):
    response = django_client.post("/orders/", data=json.dumps(
        {"customer_id": "user-8", "total": "5.00", "card": "declined"}),
        content_type="application/json")
    assert response.status_code == 402
    assert django_setup.objects.count() == 0, "the order was not rolled back"
    assert redis_client.llen(app_producer.queue) == 0, "a rolled-back order sent its event"
    # The same view does send once the order commits (so the silence above means something).
    ok = django_client.post("/orders/", data=json.dumps({"customer_id": "user-8",
                            "total": "5.00"}), content_type="application/json")
    assert ok.status_code == 201
    assert [m["envelope"]["payload"]["customer"]["source_id"]
            for m in _messages(redis_client, app_producer.queue)] == ["user-8"]


# -- FastAPI --------------------------------------------------------------------------------


def test_fastapi_endpoint_enqueues_a_message(app_producer, redis_client):
    from fastapi.testclient import TestClient

    app = importlib.import_module("fastapi_app").create_app(app_producer)
    with TestClient(app) as client:
        response = client.post("/signups", json={"user_id": "user-9", "email": "b@example.com",
                                                 "plan": "pro"})
        assert response.status_code == 202, response.text
        event_id = response.json()["event_id"]
        bad = client.post("/signups", json={"user_id": ""})
        assert bad.status_code == 422
        assert bad.json()["detail"] == {"customer": ["must carry a non-empty id or source_id"]}
    (message,) = _messages(redis_client, app_producer.queue)
    assert message["envelope"]["id"] == event_id
    assert message["envelope"]["payload"] == {
        "event": "signed_up", "customer": {"source_id": "user-9", "email": "b@example.com"},
        "metadata": {"plan": "pro"},
    }


def test_fastapi_enqueue_does_not_block_the_event_loop_while_redis_hangs(
    private_redis, namespace
):
    from fastapi.testclient import TestClient

    producer = Producer(_settings(private_redis.url, namespace, redis_timeout_s=1.5))
    app = importlib.import_module("fastapi_app").create_app(producer)
    slow: dict = {}

    def sign_up() -> None:
        started = time.monotonic()
        slow["status"] = client.post("/signups", json={"user_id": "user-10"}).status_code
        slow["took"] = time.monotonic() - started

    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        os.kill(private_redis.pid, signal.SIGSTOP)  # Redis accepts, never answers
        try:
            thread = threading.Thread(target=sign_up)
            thread.start()
            time.sleep(0.3)  # the enqueue is now waiting on Redis
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            health_took = time.monotonic() - started
            thread.join(10)
        finally:
            os.kill(private_redis.pid, signal.SIGCONT)
    assert slow["status"] == 503 and slow["took"] > 1.2, slow  # it really waited on Redis
    assert health_took < 0.5, f"/health waited {health_took:.2f}s behind the enqueue"
    producer.close()
