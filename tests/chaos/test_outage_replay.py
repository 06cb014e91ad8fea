"""The API is down for longer than the retry budget: events are dead-lettered
(``retries_exhausted``). It recovers, the rest flows, and ``voucherify-ingest dlq replay`` puts
the dead letters back: in the end every event is delivered exactly once and the store is empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(drain_budget_s(event_count(), 0.06, 240))]

MAX_RETRIES = 1  # a retry budget of two attempts, backoff 0.2-1 s: well under the outage


def _replay(env) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "voucherify_ingest.cli", "dlq", "replay", "--json"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_outage_longer_than_retries_then_replay(
    redis_url, namespace, remote_standin, make_process, chaos_events, chaos_report
):
    standin = remote_standin
    env = chaos_env(redis_url, namespace, standin.url, VOUCHERIFY_MAX_RETRIES=str(MAX_RETRIES))
    with scenario(env) as (producer, outcomes):
        workers = Workers(make_process, env)
        ids = enqueue(producer, chaos_events)
        standin.set_down(503)
        workers.start("a")
        workers.start("b")
        budget = drain_budget_s(chaos_events, 0.05, 120)
        deadline = time.monotonic() + budget
        while outcomes.dlq.count() < chaos_events // 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        standin.set_up()  # recovers with part of the queue still waiting
        while any(outcomes.pending().values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        dead_before = outcomes.dead_lettered_ids()
        entries = [outcomes.dlq.get(i) for i in dead_before[:200]]
        assert chaos_events // 2 <= len(dead_before) < chaos_events
        assert {e["reason"] for e in entries} == {"retries_exhausted"}
        assert {e["attempts"] for e in entries} == {MAX_RETRIES + 1}
        assert {e["status"] for e in entries} == {503}

        result = _replay(env)
        assert result["replayed"] == len(dead_before)
        done = wait_until_accounted(ids, standin, outcomes, deadline - time.monotonic())
        again = _replay(env)  # nothing left: replaying again is harmless
        wait_quiet(outcomes.redis, outcomes.settings, timeout=60)
        report = account("API down past the retry budget, then dlq replay", ids,
                         standin.received(), outcomes.dead_lettered_ids())
        report.extra["dead-lettered during the outage"] = len(dead_before)
        report.extra["replayed"] = f"{result['replayed']}, then {again['replayed']}"
        chaos_report(report)
        assert done, f"not all accounted for within {budget:.0f}s: {outcomes.pending()}"
        report.check()
        assert report.dead_lettered == 0 and report.delivered == len(set(ids))
        assert again["replayed"] == 0
