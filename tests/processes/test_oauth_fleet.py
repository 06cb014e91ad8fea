"""Four worker processes with ``VOUCHERIFY_AUTH=oauth`` over several token lifetimes.

The stand-in's tokens live 4 s and the workers refresh 1 s ahead, so a token is due every 3 s.
Events arrive steadily for ~15 s; the fleet must use about one token per refresh period (not
one per process), and no event may be lost or dead-lettered across the refreshes.
"""

from __future__ import annotations

import math
import time

import pytest

from tests.support.pipeline import APP_ID, APP_TOKEN, make_env, worker_argv
from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.keys import Keys
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

LIFETIME_S = 4
AHEAD_S = 1
RUN_S = 15.0
RATE_PER_S = 30
WORKERS = 4


def test_four_workers_share_one_token_per_lifetime(redis_url, redis_client, namespace,
                                                   make_process):
    from producers import Producer

    api = StandIn(APP_ID, APP_TOKEN, token_lifetime_s=LIFETIME_S).start()
    try:
        env = make_env(redis_url, namespace, api.url, VOUCHERIFY_AUTH="oauth",
                       VOUCHERIFY_OAUTH_REFRESH_AHEAD_S=str(AHEAD_S))
        workers = [make_process(worker_argv(concurrency=2), env=env, name=f"oauth-{i}")
                   for i in range(WORKERS)]
        for proc in workers:
            proc.wait_for_output('"worker_ready"', timeout=60)
        settings = Settings.from_env(env)
        producer = Producer(settings)
        ids: list[str] = []
        started = time.monotonic()
        try:
            n = 0
            while time.monotonic() - started < RUN_S:
                ids.append(producer.enqueue_event(
                    {"event": "order_paid", "customer": {"source_id": f"c{n}"}}
                ))
                n += 1
                time.sleep(max(0.0, started + n / RATE_PER_S - time.monotonic()))
        finally:
            producer.close()
        assert api.wait_for_delivered(len(ids), timeout=60), api.stats()
        elapsed = time.monotonic() - started
        issued = api.tokens.issued
        stats = api.stats()
        dead = DeadLetterStore(redis_client, Keys.from_settings(settings))
        print(f"\noauth fleet: {WORKERS} workers, {len(ids)} events over {elapsed:.1f} s, "
              f"token lifetime {LIFETIME_S} s (refresh every {LIFETIME_S - AHEAD_S} s): "
              f"{issued} tokens issued; requests {stats['by_status']}")
        assert set(api.delivered_ids()) == set(ids), "an event was lost across a refresh"
        assert dead.count() == 0, "an event was dead-lettered across a refresh"
        periods = elapsed / (LIFETIME_S - AHEAD_S)
        assert 2 <= issued <= math.ceil(periods) + 2, (
            f"{issued} tokens for {periods:.1f} refresh periods (one per worker would be "
            f"~{WORKERS * periods:.0f})"
        )
        bearers = {r.headers.get("Authorization", "")[len("Bearer "):] for r in api.received()}
        logs = "\n".join(p.output() for p in workers)
        assert not [t for t in bearers if t and t in logs], "a token reached a worker's log"
    finally:
        api.stop()
