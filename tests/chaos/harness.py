"""What the chaos scenarios share: sizes, events, worker processes, and waiting for the end.

Sizes: ``VOUCHERIFY_CHAOS_EVENTS`` (default 5,000) events per scenario;
``VOUCHERIFY_CHAOS_LONG=1`` makes the default 50,000 (the long suite).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator

import redis
import requests

from producers import Producer
from tests.support.pipeline import make_env, worker_argv
from tests.support.procs import ManagedProcess
from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.keys import Keys
from voucherify_ingest.settings import Settings

EVENTS_ENV = "VOUCHERIFY_CHAOS_EVENTS"
LONG_ENV = "VOUCHERIFY_CHAOS_LONG"
DEFAULT_EVENTS = 5_000
LONG_EVENTS = 50_000
WORKER_READY_TIMEOUT_S = 60.0


def long_run() -> bool:
    return os.environ.get(LONG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def event_count() -> int:
    raw = os.environ.get(EVENTS_ENV, "").strip()
    if raw:
        return max(1, int(raw))
    return LONG_EVENTS if long_run() else DEFAULT_EVENTS


def drain_budget_s(n: int, per_event_s: float, floor_s: float = 60.0) -> float:
    """A generous bound on how long a scenario may take (tests must be bounded in time)."""
    return floor_s + n * per_event_s


def chaos_event(n: int) -> dict:
    return {
        "event": "order_paid",
        "customer": {"source_id": f"chaos-{n}", "email": f"chaos{n}@example.com"},
        "metadata": {"n": n, "total": n % 97 + 0.5},
    }


def enqueue(producer: Producer, n: int, start: int = 0, chunk: int = 1_000) -> list[str]:
    ids: list[str] = []
    for first in range(start, start + n, chunk):
        last = min(start + n, first + chunk)
        ids += producer.enqueue_events([chaos_event(i) for i in range(first, last)])
    return ids


def chaos_env(redis_url: str, namespace: str, api_url: str, **overrides: str) -> dict[str, str]:
    """The end-to-end test environment (``tests.support.pipeline.make_env``)."""
    return make_env(redis_url, namespace, api_url, **overrides)


class Workers:
    """Named worker processes on one environment; start, SIGKILL, restart by name."""

    def __init__(self, make_process: Callable[..., ManagedProcess], env: dict[str, str],
                 concurrency: int = 8):
        self.make_process = make_process
        self.env = env
        self.concurrency = concurrency
        self.procs: dict[str, ManagedProcess] = {}
        self.every: list[ManagedProcess] = []  # killed ones too: their logs still count
        self.generation = 0

    def start(self, name: str, *, wait: bool = True) -> ManagedProcess:
        self.generation += 1
        proc = self.make_process(
            worker_argv(self.concurrency), env=self.env, name=f"{name}-{self.generation}"
        )
        self.procs[name] = proc
        self.every.append(proc)
        if wait:
            proc.wait_for_output('"worker_ready"', timeout=WORKER_READY_TIMEOUT_S)
        return proc

    def wait_ready(self, name: str) -> None:
        self.procs[name].wait_for_output('"worker_ready"', timeout=WORKER_READY_TIMEOUT_S)

    def kill(self, name: str) -> None:
        self.procs[name].kill()

    def all_running(self) -> bool:
        return all(p.is_running() for p in self.procs.values())

    def outputs(self) -> str:
        return "\n".join(p.output() for p in self.procs.values())

    def every_output(self) -> list[str]:
        """The logs of every process started, the killed ones included."""
        return [p.output() for p in self.every]


class Outcomes:
    """Reads where events are: queue, unacked, delayed, dead letters (tolerates Redis restarts)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = Keys.from_settings(settings)
        self.redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2
        )
        self.dlq = DeadLetterStore(self.redis, self.keys)

    def dead_lettered_ids(self) -> list[str]:
        return [i.decode() for i in self.redis.hkeys(self.keys.dlq_entries)]

    def held_ids(self) -> list[str]:
        """Dead letters with reason ``in_doubt`` (held: the API may have recorded them)."""
        return [i.decode() for i in self.redis.zrange(self.keys.dlq_reason("in_doubt"), 0, -1)]

    def pending(self) -> dict[str, int]:
        lanes = self.keys.lanes  # every lane's list and delayed set (live and bulk)
        with self.redis.pipeline(transaction=False) as pipe:
            for lane in lanes:
                pipe.llen(self.keys.lane_queue(lane))
                pipe.zcard(self.keys.lane_delayed(lane))
            pipe.hlen(self.keys.unacked)
            *per_lane, unacked = pipe.execute()
        queued, delayed = sum(per_lane[0::2]), sum(per_lane[1::2])
        return {"queued": queued, "unacked": unacked, "delayed": delayed}

    def close(self) -> None:
        self.redis.close()


@contextlib.contextmanager
def scenario(env: dict[str, str]) -> Iterator[tuple[Producer, Outcomes]]:
    """The producer and the outcome reader of a scenario run with ``env``; closed at its end."""
    settings = Settings.from_env(env)
    producer, outcomes = Producer(settings), Outcomes(settings)
    try:
        yield producer, outcomes
    finally:
        outcomes.close()
        producer.close()


def wait_until_accounted(
    enqueued_ids: Iterable[str],
    standin,
    outcomes: Outcomes,
    timeout_s: float,
    *,
    also: Callable[[], bool] = lambda: True,
    interval_s: float = 0.5,
) -> bool:
    """Poll until every id is delivered or dead-lettered, nothing is pending in Redis and
    ``also()`` holds. The stand-in's cheap counters gate the full comparison."""
    wanted = set(enqueued_ids)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            dead = outcomes.dead_lettered_ids()
            if (
                not any(outcomes.pending().values())
                and also()
                and standin.stats()["delivered"] + len(dead) >= len(wanted)
                and wanted <= set(standin.delivered_ids()) | set(dead)
            ):
                return True
        except (redis.RedisError, requests.RequestException):
            pass
        time.sleep(interval_s)
    return False
