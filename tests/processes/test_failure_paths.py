"""Failure paths that must end with an owner (issue 14), on real parts: a real Redis, real
worker processes, the loopback stand-in.

Faults are injected into a real worker process by a small launcher that patches one method
before handing over to the product's own entry point (``voucherify-ingest worker`` or
``celery -A worker.app worker``)."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest

from tests.support.pipeline import WORKER_READY_TIMEOUT_S
from tests.support.waiting import wait_for
from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.keys import Keys
from voucherify_ingest.standin import respond

pytestmark = pytest.mark.e2e


def _event(n: int, **metadata) -> dict:
    return {"event": "order_paid", "customer": {"source_id": f"user-{n}"},
            "metadata": {"n": n, **metadata}}


FAULTY_LAUNCHER = """
import sys
import worker.client as client

_send = client.VoucherifyClient.send_event

def send_event(self, payload, event_id=None):
    if payload.get("metadata", {}).get("boom"):
        raise KeyError("injected fault: a bug in the delivery path")
    return _send(self, payload, event_id)

client.VoucherifyClient.send_event = send_event
sys.argv = ["voucherify-ingest", "worker", "-c", "2", "-P", "threads"]
from voucherify_ingest.cli import main
main()
"""


def test_an_unexpected_exception_is_dead_lettered_as_internal_not_acked_silently(
    standin, producer, make_process, pipeline_env, pipeline_settings, redis_client, tmp_path
):
    launcher = tmp_path / "faulty_worker.py"
    launcher.write_text(textwrap.dedent(FAULTY_LAUNCHER))
    bad = producer.enqueue_event(_event(1, boom=True))
    good = producer.enqueue_event(_event(2))
    batch = producer.enqueue_events([_event(3), _event(4, boom=True)], batch_size=2)
    worker = make_process([sys.executable, str(launcher)], env=pipeline_env, name="faulty")
    worker.wait_for_output('"worker_ready"', timeout=WORKER_READY_TIMEOUT_S)
    dlq = DeadLetterStore(redis_client, Keys.from_settings(pipeline_settings))
    entry = wait_for(lambda: dlq.get(bad), 30, "the faulty event in the dead-letter store")
    assert entry["reason"] == "internal"
    assert entry["payload"]["metadata"]["boom"] is True
    assert "KeyError" in entry["error"]["message"]
    assert "injected fault" in entry["error"]["message"]
    assert entry["error"]["details"], "where the error was raised is kept"
    # The batch: its good event was delivered before the fault, the faulty one dead-lettered,
    # and the delivered one is not dead-lettered as well.
    wait_for(lambda: dlq.get(batch[1]), 30, "the batch's faulty event in the dead-letter store")
    assert standin.wait_for_delivered(2, timeout=30)
    assert set(standin.delivered_ids()) == {good, batch[0]}
    assert dlq.get(batch[0]) is None
    assert dlq.count() == 2
    assert '"delivery_internal_error"' in worker.output()


def _plain_celery_argv(namespace: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "threads",
            "-c", "2", "--without-mingle", "--without-gossip", "-n", f"plain-{namespace}@%h"]


def test_plain_celery_worker_brings_a_retried_event_back(
    standin, producer, make_process, pipeline_env, pipeline_settings, redis_client, namespace
):
    """`celery -A worker.app worker` gets our machinery: the 503'd event waits in the delayed
    set and only the housekeeping thread (wired by the app's signals) brings it back."""
    standin.plan(respond(503))
    event_id = producer.enqueue_event(_event(1))
    worker = make_process(_plain_celery_argv(namespace), env=pipeline_env, name="plain-celery")
    worker.wait_for_output('"worker_ready"', timeout=WORKER_READY_TIMEOUT_S)
    assert standin.wait_for_delivered(1, timeout=30), worker.tail()
    assert standin.delivered_ids() == {event_id: 1}
    statuses = [r.status for r in standin.received()]
    assert statuses == [503, 200], statuses
    nodes = [n.decode() for n in redis_client.zrange(f"{namespace}:workers", 0, -1)]
    assert nodes and nodes[0].startswith(f"plain-{namespace}@"), nodes


def test_plain_celery_worker_refuses_to_start_without_credentials(
    make_process, pipeline_env, namespace
):
    env = {**pipeline_env, "VOUCHERIFY_APP_TOKEN": None}
    worker = make_process(_plain_celery_argv(namespace), env=env, name="plain-no-token")
    assert worker.wait(timeout=30) != 0
    assert "VOUCHERIFY_APP_TOKEN" in worker.output()


PROBE_S = 0.5


def test_refused_credentials_pause_the_fleet_and_resume_by_themselves(
    standin, producer, start_worker, pipeline_settings, redis_client
):
    """The API refuses the right credentials for a while (a token rotation gone wrong), then
    accepts them: nothing dead-lettered, nothing lost, and only a few POSTs while refused."""
    standin.set_down(401)
    ids = producer.enqueue_events([_event(n) for n in range(40)])
    worker = start_worker(concurrency=4, VOUCHERIFY_AUTH_PROBE_INTERVAL_S=str(PROBE_S),
                          VOUCHERIFY_AUTH_DEAD_LETTER_AFTER_S="600")
    refused_at = time.monotonic()
    # Hold the refusal until the fleet has probed a few times (observable: refused POSTs).
    wait_for(lambda: len(standin.received()) >= 6, 30, "a few probes while refused")
    standin.set_up()
    refused_s = time.monotonic() - refused_at
    refused = len(standin.received())
    assert standin.wait_for_delivered(40, timeout=60), worker.tail()
    dlq = DeadLetterStore(redis_client, Keys.from_settings(pipeline_settings))
    assert dlq.count() == 0, "an event was dead-lettered during the refusal"
    assert set(standin.delivered_ids()) == set(ids)
    assert max(standin.delivered_ids().values()) == 1
    # In flight when the pause began (4 threads), then one probe per interval (+ slack).
    assert refused <= 4 + refused_s / PROBE_S + 2, (refused, refused_s)
    out = worker.output()
    assert '"auth_paused"' in out and '"auth_pause_ended"' in out
    counters = {k.decode(): int(v) for k, v in
                redis_client.hgetall(f"{pipeline_settings.key_prefix}:stats:counters").items()}
    assert counters["auth_refused"] == refused


def test_refused_credentials_are_dead_lettered_as_auth_after_the_bound(
    standin, producer, start_worker, pipeline_settings, redis_client
):
    standin.set_down(403)
    ids = producer.enqueue_events([_event(n) for n in range(5)])
    start_worker(concurrency=2, VOUCHERIFY_AUTH_PROBE_INTERVAL_S="0.2",
                 VOUCHERIFY_AUTH_DEAD_LETTER_AFTER_S="1.5")
    dlq = DeadLetterStore(redis_client, Keys.from_settings(pipeline_settings))
    wait_for(lambda: dlq.count() == 5, 30, "every event dead-lettered once the bound passed")
    entries = [dlq.get(i) for i in ids]
    assert {e["reason"] for e in entries} == {"auth"}
    # Not one before the pause had lasted the bound, counted from the first refusal.
    first = standin.received()[0]
    first_refused_epoch = time.time() - (time.monotonic() - first.mono)
    assert first.status == 403
    assert min(e["last_failed_ts"] for e in entries) >= first_refused_epoch + 1.5 - 0.05
