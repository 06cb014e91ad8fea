"""Two worker processes; one of them is SIGKILLed every ~2 s and restarted at once.

What a killed worker had taken but not acked must come back (measured: SIGKILL -> the message
is back in a live worker's hands) well under 60 s, nothing may be lost, and nothing may be
recorded twice by the API: a request the killed worker had sent without recording its outcome
is in doubt, and the default policy (no marker key: ``hold``) dead-letters it as ``in_doubt``
instead of resending it blind (see ``tests.chaos.accounting`` and
``tests/chaos/test_indoubt_kills.py`` for the other policies).
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
from tests.chaos.kills import CONCURRENCY, run_kills
from tests.chaos.redelivery import RedeliveryProbe
from tests.support.pipeline import wait_quiet
from voucherify_ingest.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(drain_budget_s(event_count(), 0.05, 240))]

REDELIVERY_GOAL_S = 60.0
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
    budget = drain_budget_s(chaos_events, 0.04, 120)
    run = run_kills("sigkill every 2 s (default policy: hold)", redis_url=redis_url,
                    namespace=namespace, standin=remote_standin, make_process=make_process,
                    events=chaos_events, budget_s=budget)
    report = run.report
    chaos_report(report)
    assert run.kills >= 3, "the backlog drained before the kills began: proves nothing"
    assert run.done, f"not all accounted for within {budget:.0f}s"
    report.check()  # 0 lost, 0 recorded twice
    assert set(run.dead_reasons) <= {"in_doubt"}, run.dead_reasons
    # A kill can only leave in doubt the requests its worker had in flight.
    assert report.held <= run.kills * CONCURRENCY, report.summary()
    times = run.probe.times_s
    assert times, "no killed worker held a message when it died: nothing was measured"
    assert max(times) < REDELIVERY_GOAL_S, run.probe.summary()


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
        dead = outcomes.dead_lettered_ids()
        held = [i for i in dead if (outcomes.dlq.get(i) or {}).get("reason") == "in_doubt"]
        report = account("sigkill, default settings", ids, received, dead, held_ids=held,
                         in_doubt=answer_not_in_ledger(received, workers.every_output()))
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
