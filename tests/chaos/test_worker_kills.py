"""Two worker processes; one of them is SIGKILLed every ~2 s and restarted at once.

What a killed worker had taken but not acked must come back (measured: SIGKILL -> the message
is back in a live worker's hands) well under 60 s, nothing may be lost, and nothing may be
delivered twice except what the killed worker had already sent when it died (the API's 200 came
back to a dying process, so the ledger never heard of it; counted and reported, see
``tests.chaos.accounting``).
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.accounting import (
    KILL_WINDOW_BEFORE_S,
    account,
    answer_during_kill,
    answer_not_in_ledger,
)
from tests.chaos.harness import (
    LONG_ENV,
    Workers,
    chaos_env,
    drain_budget_s,
    enqueue,
    event_count,
    long_run,
    scenario,
    wait_until_accounted,
)
from tests.chaos.redelivery import RedeliveryProbe
from tests.support.pipeline import wait_quiet
from voucherify_ingest.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(drain_budget_s(event_count(), 0.05, 240))]

KILL_EVERY_S = 2.0
# The API's answer time: 2 workers x CONCURRENCY requests in flight then cap the drain at
# ~320 events/s, so the backlog outlasts several kills however little CPU a worker spends per
# event (with a 0 ms stand-in, 5,000 events drained in under 6 s: only two kills).
API_LATENCY_S = 0.05
# The shortest visibility timeout these timeouts allow (2 x (1 + 2 + 2) + 5, see Settings).
VISIBILITY_S = 15
REDELIVERY_GOAL_S = 60.0
CONCURRENCY = 8
# Settings fields whose shipped defaults the default-settings measurement restores.
DEFAULTS = {
    "visibility_timeout_s": "VOUCHERIFY_VISIBILITY_TIMEOUT_S",
    "restore_interval_s": "VOUCHERIFY_RESTORE_INTERVAL_S",
    "read_timeout_s": "VOUCHERIFY_READ_TIMEOUT_S",
    "connect_timeout_s": "VOUCHERIFY_CONNECT_TIMEOUT_S",
    "rate_limit_max_wait_s": "VOUCHERIFY_RATE_LIMIT_MAX_WAIT_S",
}


def test_sigkill_every_two_seconds(
    redis_url, namespace, remote_standin, make_process, chaos_events, chaos_report
):
    standin = remote_standin
    standin.set_latency(API_LATENCY_S)
    env = chaos_env(
        redis_url, namespace, standin.url,
        VOUCHERIFY_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
        VOUCHERIFY_RESTORE_INTERVAL_S="1",
    )
    with (
        scenario(env) as (producer, outcomes),
        RedeliveryProbe(redis_url, outcomes.keys.unacked_index) as probe,
    ):
        workers = Workers(make_process, env, concurrency=CONCURRENCY)
        ids = enqueue(producer, chaos_events)
        workers.start("a")
        workers.start("b")
        budget = drain_budget_s(chaos_events, 0.04, 120)
        deadline = time.monotonic() + budget
        victims = ["a", "b"]
        kills: list[tuple[float, float]] = []  # (just before SIGKILL, kill returned)
        while time.monotonic() < deadline:
            time.sleep(KILL_EVERY_S)
            pending = outcomes.pending()
            if pending["queued"] == 0 and pending["delayed"] == 0:
                break  # the backlog is drained: stop killing, let the stranded come back
            victim = victims[probe.kills % 2]
            workers.wait_ready(victim)  # kill a consuming worker, not one still starting
            before = time.time()
            probe.killed(before)
            workers.kill(victim)
            kills.append((before, time.time()))
            workers.start(victim, wait=False)
        assert probe.kills >= 3, "the backlog drained before the kills began: proves nothing"

        done = wait_until_accounted(
            ids, standin, outcomes, deadline - time.monotonic(),
            also=lambda: probe.outstanding() == 0,
        )
        wait_quiet(outcomes.redis, outcomes.settings, timeout=90)  # nothing left to send twice
        received = standin.received()
        report = account("sigkill every 2 s", ids, received, outcomes.dead_lettered_ids(),
                         answer_lost=answer_not_in_ledger(received, workers.every_output()))
        report.extra["200s answered within a kill window (timing estimate, for comparison)"] = sum(
            1 for r in received if r.status == 200 and answer_during_kill(kills)(r))
        report.extra["redelivery after SIGKILL"] = probe.summary()
        report.extra["visibility timeout"] = f"{VISIBILITY_S} s, restore sweep every 1 s"
        report.extra["resent because the API's 200 reached a worker being killed"] = (
            f"{report.resent_answer_lost} in {len(kills)} kills "
            f"({report.resent_answer_lost / max(1, len(kills)):.2f} per kill)"
        )
        chaos_report(report)
        assert done, f"not all accounted for within {budget:.0f}s: {outcomes.pending()}"
        report.check()
        # A kill can only strand the requests its worker had in flight.
        assert report.resent_answer_lost <= len(kills) * workers.concurrency, report.summary()
        times = probe.times_s
        assert times, "no killed worker held a message when it died: nothing was measured"
        assert max(times) < REDELIVERY_GOAL_S, probe.summary()


LATENCY_S = 0.3


@pytest.mark.skipif(not long_run(), reason=f"long suite only ({LONG_ENV}=1): about a minute")
def test_redelivery_after_sigkill_with_default_settings(
    redis_url, namespace, remote_standin, make_process, chaos_report
):
    """The same measurement with the shipped defaults (visibility 45 s, sweep every 5 s, the
    default timeouts): what an operator gets without tuning."""
    standin = remote_standin
    standin.set_latency(LATENCY_S)  # the killed worker is sure to hold messages
    env = chaos_env(
        redis_url, namespace, standin.url,
        **{name: str(getattr(Settings(), field)) for field, name in DEFAULTS.items()},
    )
    with (
        scenario(env) as (producer, outcomes),
        RedeliveryProbe(redis_url, outcomes.keys.unacked_index) as probe,
    ):
        workers = Workers(make_process, env, concurrency=CONCURRENCY)
        ids = enqueue(producer, 400)
        workers.start("a")
        workers.start("b")
        time.sleep(2.0)
        before = time.time()
        probe.killed(before)
        workers.kill("a")
        kills = [(before, time.time())]
        done = wait_until_accounted(ids, standin, outcomes, 180,
                                    also=lambda: probe.outstanding() == 0)
        wait_quiet(outcomes.redis, outcomes.settings, timeout=90)
        received = standin.received()
        report = account("sigkill, default settings", ids, received,
                         outcomes.dead_lettered_ids(),
                         answer_lost=answer_not_in_ledger(received, workers.every_output()))
        window = answer_during_kill(kills, before_s=LATENCY_S + KILL_WINDOW_BEFORE_S)
        report.extra["200s answered within a kill window (timing estimate, for comparison)"] = sum(
            1 for r in received if r.status == 200 and window(r))
        report.extra["redelivery after SIGKILL"] = probe.summary()
        report.extra["settings"] = (
            f"visibility {outcomes.settings.visibility_timeout_s:g} s, "
            f"sweep every {outcomes.settings.restore_interval_s:g} s"
        )
        chaos_report(report)
        assert done, outcomes.pending()
        report.check()
        assert probe.times_s, "the killed worker held nothing: nothing was measured"
        assert max(probe.times_s) < REDELIVERY_GOAL_S, probe.summary()
