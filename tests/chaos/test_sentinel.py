"""A Sentinel failover mid-run: the master is SIGKILLed while a producer enqueues ~200 events/s
(``VOUCHERIFY_REDIS_WAIT_REPLICAS=1``, spool on) and two workers deliver them.

Measured and printed in the chaos summary: how long after the kill the producer's writes reach
Redis again (not the spool) and the workers deliver events enqueued after the kill; events lost
(acknowledged to the producer, neither delivered nor dead-lettered) and sent twice. The goal of
issue 17: 0 lost, both resumed within 30 s of the failover.

``VOUCHERIFY_CHAOS_EVENTS`` sets the size (default 5,000, i.e. ~25 s of producing).
"""

from __future__ import annotations

import secrets
import threading
import time

import pytest
import redis

from producers import Producer
from tests.chaos.accounting import account
from tests.chaos.harness import (
    Outcomes,
    Workers,
    chaos_env,
    chaos_event,
    drain_budget_s,
    event_count,
    wait_until_accounted,
)
from tests.support.redis_server import RedisServerUnavailable
from tests.support.sentinel_cluster import MASTER_NAME, SentinelCluster
from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.errors import IngestError
from voucherify_ingest.keys import Keys
from voucherify_ingest.redis_conn import make_redis
from voucherify_ingest.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(drain_budget_s(event_count(), 0.03, 240))]

RATE_PER_S = 200
RESUME_GOAL_S = 30.0


class SentinelOutcomes(Outcomes):
    """``Outcomes`` reading through the sentinels (it follows the master like the workers)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = Keys.from_settings(settings)
        self.redis = make_redis(settings, timeout_s=5)
        self.dlq = DeadLetterStore(self.redis, self.keys)


class PacedProducer(threading.Thread):
    """Enqueues ``n`` events one call at a time at ``rate`` per second, noting each outcome."""

    def __init__(self, producer: Producer, n: int, rate: float):
        super().__init__(name="paced-producer", daemon=True)
        self.producer, self.n, self.rate = producer, n, rate
        self.acked: list[str] = []  # enqueue_event returned: stored in Redis or the spool
        # (epoch s the call started, event id, "redis" | "spool" | "error")
        self.calls: list[tuple[float, str, str]] = []
        self.errors: list[str] = []
        self.longest_call_s = 0.0
        self.first_drain_at: float | None = None  # set by watch_drain()

    def run(self) -> None:
        next_at = time.monotonic()
        for n in range(self.n):
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += 1 / self.rate
            started = time.time()
            try:
                event_id = self.producer.enqueue_event(chaos_event(n))
            except IngestError as exc:
                self.calls.append((started, "", "error"))
                self.errors.append(type(exc).__name__)
                continue
            self.longest_call_s = max(self.longest_call_s, time.time() - started)
            spooled = self.producer.spool is not None and self.producer.spool.pending
            self.acked.append(event_id)
            self.calls.append((started, event_id, "spool" if spooled else "redis"))


def watch_drain(paced: PacedProducer, since: float, stop: threading.Event) -> None:
    """Note when the spool first pushes into Redis after ``since``: the producer's writes
    reach the (new) master again. (While events keep coming, new ones join the spool to keep
    their order, so the spool, not a direct LPUSH, is the way back.)"""
    spool = paced.producer.spool
    last = spool.stats()["records"]
    while not stop.is_set():
        records = spool.stats()["records"]
        if records < last and time.time() > since:
            paced.first_drain_at = time.time()
            return
        last = records
        stop.wait(0.02)


def test_master_killed_mid_run_loses_nothing(tmp_path, remote_standin, make_process,
                                             chaos_events, chaos_report):
    try:
        cluster = SentinelCluster(tmp_path / "cluster").start()
    except RedisServerUnavailable as exc:
        pytest.skip(f"no redis-server: {exc}")
    try:
        _run(cluster, tmp_path, remote_standin, make_process, chaos_events, chaos_report)
    finally:
        cluster.stop()


def _run(cluster, tmp_path, standin, make_process, n_events, chaos_report):
    namespace = "t" + secrets.token_hex(4)
    env = chaos_env(
        cluster.url, namespace, standin.url,
        VOUCHERIFY_REDIS_SENTINEL_MASTER=MASTER_NAME,
        VOUCHERIFY_REDIS_WAIT_REPLICAS="1",
        VOUCHERIFY_REDIS_WAIT_TIMEOUT_MS="1000",
        VOUCHERIFY_SPOOL_DIR=str(tmp_path / "spool"),
    )
    settings = Settings.from_env(env)
    producer, outcomes = Producer(settings), SentinelOutcomes(settings)
    try:
        workers = Workers(make_process, env)
        workers.start("a")
        workers.start("b")
        paced = PacedProducer(producer, n_events, RATE_PER_S)
        paced.start()
        # Kill the master once ~40% is enqueued and the workers are busy delivering.
        kill_after = int(n_events * 0.4)
        deadline = time.monotonic() + n_events / RATE_PER_S + 60
        while len(paced.calls) < kill_after and time.monotonic() < deadline:
            time.sleep(0.05)
        assert standin.stats()["delivered"] > 0, "workers delivered nothing before the kill"
        old = cluster.kill_master()  # returns once the SIGKILLed process is reaped
        killed_at = time.time()
        stop_watch = threading.Event()
        watcher = threading.Thread(target=watch_drain, args=(paced, killed_at, stop_watch),
                                   daemon=True)
        watcher.start()
        new = cluster.wait_for_failover(old, timeout_s=60)
        promoted_at = time.time()
        paced.join(timeout=max(1.0, deadline - time.monotonic()))
        assert not paced.is_alive(), "the producer did not finish"

        # The spool drains into the new master by itself.
        spool_deadline = time.monotonic() + 60
        while producer.spool.pending and time.monotonic() < spool_deadline:
            time.sleep(0.2)
        assert not producer.spool.pending, "the spool did not drain into the new master"

        budget = drain_budget_s(n_events, 0.02, 120)
        done = wait_until_accounted(paced.acked, standin, outcomes, budget)
        received = standin.received()
        report = account("sentinel failover (WAIT 1, spool on)", paced.acked, received,
                         outcomes.dead_lettered_ids())

        stop_watch.set()
        watcher.join(5)
        after_kill = [c for c in paced.calls if c[0] > killed_at]
        first_direct = next((t for t, _, where in after_kill if where == "redis"), None)
        reached = [t for t in (first_direct, paced.first_drain_at) if t is not None]
        first_redis = min(reached) if reached else None
        new_ids = {event_id for _, event_id, _ in after_kill if event_id}
        first_new_200 = min(
            (r.at for r in received if r.status == 200 and r.event_id in new_ids), default=None
        )
        producer_resume = None if first_redis is None else first_redis - killed_at
        worker_resume = None if first_new_200 is None else first_new_200 - killed_at
        report.extra["failover"] = (
            f"master :{old} SIGKILLed after {kill_after} calls; sentinels promoted :{new} "
            f"{promoted_at - killed_at:.1f} s later"
        )
        report.extra["producer"] = (
            f"{len(paced.calls)} calls at {RATE_PER_S}/s: "
            f"{sum(1 for c in paced.calls if c[2] == 'redis')} to Redis, "
            f"{sum(1 for c in paced.calls if c[2] == 'spool')} to the spool, "
            f"{len(paced.errors)} refused {sorted(set(paced.errors))}, longest call "
            f"{paced.longest_call_s:.2f} s; writes reach Redis again "
            f"{_s(producer_resume)} after the kill"
        )
        report.extra["workers"] = (
            f"first 200 for an event enqueued after the kill {_s(worker_resume)} after it"
        )
        chaos_report(report)
        print(report.summary())
        assert done, f"not all accounted for within {budget:.0f}s: {outcomes.pending()}"
        report.check()
        assert not paced.errors, "with the spool on, no enqueue call may fail"
        assert producer_resume is not None and producer_resume < RESUME_GOAL_S
        assert worker_resume is not None and worker_resume < RESUME_GOAL_S
        assert workers.all_running(), "a worker died in the failover"
    finally:
        try:
            outcomes.close()
        except redis.RedisError:
            pass
        producer.close()


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def test_clients_follow_a_switchover_off_a_demoted_master(tmp_path):
    """``SENTINEL FAILOVER`` demotes a live master: connections to it now get ``READONLY``.
    serve's raw LPUSH connection and ``make_redis`` clients must move to the new master."""
    import asyncio

    from producers.serve.pusher import BatchPusher

    try:
        cluster = SentinelCluster(tmp_path / "cluster").start()
    except RedisServerUnavailable as exc:
        pytest.skip(f"no redis-server: {exc}")
    try:
        settings = Settings.from_env({
            "REDIS_URL": cluster.url, "VOUCHERIFY_REDIS_SENTINEL_MASTER": MASTER_NAME,
            "VOUCHERIFY_QUEUE": "switch-events", "VOUCHERIFY_REDIS_WAIT_REPLICAS": "1",
            "VOUCHERIFY_REDIS_WAIT_TIMEOUT_MS": "1000",
        })
        client = make_redis(settings)

        async def scenario() -> tuple[int, int, int]:
            pusher = BatchPusher.for_settings(settings)
            try:
                await pusher.push("before")
                client.lpush("switch-events", "sync-before")
                old = cluster.master_by_sentinels()
                sentinel = cluster.client(next(iter(cluster.sentinels)))
                try:
                    sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
                finally:
                    sentinel.close()
                new = await asyncio.to_thread(cluster.wait_for_failover, old, 30)
                deadline = time.monotonic() + 30
                while cluster.role(old) != "slave" and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert cluster.role(old) == "slave", "the old master was not demoted"
                failures = 0
                while True:  # the old connection answers READONLY once; then the new master
                    try:
                        await pusher.push("after")
                        client.lpush("switch-events", "sync-after")
                        break
                    except redis.RedisError:
                        failures += 1
                        assert time.monotonic() < deadline, "clients never reached the new master"
                        await asyncio.sleep(0.2)
                return old, new, failures
            finally:
                await pusher.close()

        old, new, failures = asyncio.run(scenario())
        on_new = cluster.client(new)
        try:
            stored = set(on_new.lrange("switch-events", 0, -1))
        finally:
            on_new.close()
            client.close()
        assert stored == {b"before", b"sync-before", b"after", b"sync-after"}
        assert failures <= 2, f"{failures} pushes failed after the switchover"
    finally:
        cluster.stop()
