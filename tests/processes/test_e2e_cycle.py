"""The billing-cycle quota, end to end: real workers, the real Redis, the stand-in. The bulk
lane's allowance is counted in the same Lua script that hands out rate-limit slots, so however
many workers run, the stand-in receives exactly the allowance; the rest waits (parked, never
dead-lettered), shows in ``stats --json``, and goes out once the allowance is raised."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.keys import Keys
from voucherify_ingest.lanes import BULK

pytestmark = pytest.mark.e2e

CYCLE = {"VOUCHERIFY_RATE_LIMIT": "200/s", "VOUCHERIFY_CYCLE_QUOTA": "1000",
         "VOUCHERIFY_CYCLE_BULK_SHARE": "20%"}


def _event(n: int) -> dict:
    return {"event": "order_paid", "customer": {"source_id": f"user-{n}"}, "metadata": {"n": n}}


def _stats(env: dict) -> dict:
    result = subprocess.run([sys.executable, "-m", "voucherify_ingest.cli", "stats", "--json"],
                            env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_bulk_spends_exactly_its_allowance_then_waits_until_it_is_raised(
    standin, producer, start_worker, pipeline_env, redis_client, pipeline_settings, tmp_path
):
    bulk_ids = producer.enqueue_events([_event(i) for i in range(400)], batch_size=10,
                                       lane=BULK)
    workers = [start_worker(concurrency=8, name=f"worker-{i}", **CYCLE) for i in range(3)]
    live_ids = [producer.enqueue_event(_event(1000 + i)) for i in range(50)]
    assert standin.wait_for_delivered(250, timeout=60), f"{len(standin.delivered())} of 250"
    env = {**pipeline_env, **CYCLE}
    # the other 200 wait: parked in the bulk lane's delayed set, shown by stats
    assert _wait(lambda: _stats(env)["limiter"]["cycle"]["bulk_paused"], timeout=20)
    snap = _stats(env)
    cycle = snap["limiter"]["cycle"]
    assert (cycle["used_bulk"], cycle["used_live"], cycle["left_bulk"]) == (200, 50, 0)
    bulk_lane = next(lane for lane in snap["lanes"] if lane["lane"] == "bulk")
    assert bulk_lane["delayed"] + bulk_lane["queued_events"] + snap["in_flight"] > 0
    time.sleep(1.0)  # the workers keep looking; nothing more may go out
    delivered = standin.delivered_ids()
    assert sum(1 for i in delivered if i in set(bulk_ids)) == 200
    assert set(live_ids) <= set(delivered) and max(delivered.values()) == 1
    dlq = DeadLetterStore(redis_client, Keys.from_settings(pipeline_settings))
    assert dlq.count() == 0
    pauses = [line for w in workers for line in w.output().splitlines()
              if '"cycle_quota_pause"' in line]
    assert pauses, "the pause was not logged"

    # raise the allowance and restart the workers: the other 200 go out, each once
    for worker in workers:
        worker.terminate()
    start_worker(concurrency=8, name="raised", **{**CYCLE, "VOUCHERIFY_CYCLE_BULK_SHARE": "50%"})
    assert standin.wait_for_delivered(450, timeout=60), f"{len(standin.delivered())} of 450"
    delivered = standin.delivered_ids()
    assert set(delivered) == set(bulk_ids) | set(live_ids) and max(delivered.values()) == 1
    assert dlq.count() == 0


def test_cycle_counting_survives_sigkill_and_a_redis_restart(
    standin, make_process, private_redis, namespace, tmp_path
):
    """Workers SIGKILLed and Redis restarted (AOF) mid-run: the count is in Redis, written with
    the slot, so the stand-in still receives at most the allowance."""
    from producers import Producer
    from tests.support.pipeline import make_env, worker_argv
    from voucherify_ingest.settings import Settings

    env = make_env(private_redis.url, namespace, standin.url,
                   **{**CYCLE, "VOUCHERIFY_RATE_LIMIT": "40/s"})
    producer = Producer(Settings.from_env(env))
    try:
        producer.enqueue_events([_event(i) for i in range(400)], batch_size=10, lane=BULK)
    finally:
        producer.close()

    def worker(name):
        proc = make_process(worker_argv(8), env=env, name=name)
        proc.wait_for_output('"worker_ready"', timeout=30)
        return proc

    first = worker("first")
    assert standin.wait_for_delivered(60, timeout=30)
    first.kill()
    private_redis.restart()
    second = worker("second")
    assert _wait(lambda: len(standin.delivered()) >= 190, timeout=60), (
        f"{len(standin.delivered())} delivered; second worker said: {second.output()[-3000:]}")
    time.sleep(1.0)
    second.kill()
    delivered = standin.delivered_ids()
    assert len(delivered) <= 200, f"{len(delivered)} bulk events sent, allowance 200"
    assert len(delivered) >= 190  # slots granted to the killed worker are counted, not sent
    assert max(delivered.values()) == 1


def test_a_backfill_that_cannot_fit_says_so_before_it_loads(pipeline_env, redis_client,
                                                             pipeline_settings, tmp_path):
    """Issue 19, "know before you spend": ``--dry-run`` prints the plan and queues nothing; a
    real run prints it on standard error before the first event is queued (the file is
    counted first), then the exact cost on standard output."""
    path = tmp_path / "backfill.ndjson"
    path.write_text("".join(json.dumps(_event(i)) + "\n" for i in range(300)))
    env = {**os.environ, **pipeline_env, **CYCLE}
    cli = [sys.executable, "-m", "voucherify_ingest.cli", "enqueue", "--file", str(path)]
    queue = Keys.from_settings(pipeline_settings).lane_queue(BULK)

    dry = subprocess.run([*cli, "--dry-run"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "bulk lane has 200 of 200 calls left" in dry.stdout
    assert "does NOT fit: 100 events would wait for later cycles" in dry.stdout
    assert redis_client.llen(queue) == 0

    real = subprocess.run(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=60)
    assert real.returncode == 0, real.stdout
    said = real.stdout
    up_front = said.index(f"cycle: before loading: {path} holds 300 records")
    warned = said.index("does NOT fit: 100 events would wait for later cycles")
    loaded = said.index("read 300, enqueued 300")
    assert up_front < warned < loaded, said
    assert said.count("does NOT fit") == 2  # before, and after with the exact count
    assert redis_client.llen(queue) > 0
