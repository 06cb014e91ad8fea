"""The suite's private Redis (AOF on, ``appendfsync everysec``) is restarted twice while two
workers drain the queue and a producer keeps enqueueing: nothing lost, nothing sent twice."""

from __future__ import annotations

import time

import pytest

from tests.chaos.accounting import account
from tests.chaos.harness import (
    Workers,
    chaos_env,
    drain_budget_s,
    enqueue,
    event_count,
    scenario,
    wait_until_accounted,
)
from tests.support.pipeline import wait_quiet

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(drain_budget_s(event_count(), 0.05, 240))]

DOWN_S = (1.0, 3.0)  # how long Redis stays down at each restart


def test_redis_restarted_twice_mid_run(
    private_redis, namespace, remote_standin, make_process, chaos_events, chaos_report
):
    standin = remote_standin
    env = chaos_env(private_redis.url, namespace, standin.url)
    with scenario(env) as (producer, outcomes):
        workers = Workers(make_process, env)
        half = chaos_events // 2
        ids = enqueue(producer, half)
        workers.start("a")
        workers.start("b")
        budget = drain_budget_s(chaos_events, 0.04, 120)
        deadline = time.monotonic() + budget
        restarts = []
        for n, down_s in enumerate(DOWN_S):
            target = chaos_events * (n + 1) // 3
            assert standin.wait_for_delivered(target, timeout=deadline - time.monotonic())
            private_redis.restart(down_s=down_s)
            restarts.append(standin.stats()["delivered"])
            if n == 0:  # the producer carries on once Redis is back
                ids += enqueue(producer, chaos_events - half, start=half)
        assert restarts[-1] < chaos_events, "everything was delivered before the restarts"

        done = wait_until_accounted(ids, standin, outcomes, deadline - time.monotonic())
        # Nothing queued, delayed or unacked: no POST can still come (not a fixed sleep).
        wait_quiet(outcomes.redis, outcomes.settings, timeout=60)
        report = account("redis restarted twice", ids, standin.received(),
                         outcomes.dead_lettered_ids(), held_ids=outcomes.held_ids())
        report.extra["restarts"] = (
            f"{len(DOWN_S)} (down {', '.join(f'{s:g}' for s in DOWN_S)} s) after "
            f"{', '.join(map(str, restarts))} deliveries"
        )
        chaos_report(report)
        assert done, f"not all accounted for within {budget:.0f}s: {outcomes.pending()}"
        report.check()
        assert workers.all_running(), "a worker died when Redis went away"
