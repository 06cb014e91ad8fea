"""Fixtures for end-to-end tests: the stand-in API, worker processes, a producer.

    standin            function  a started ``voucherify_ingest.standin.StandIn`` (app "test-app")
    pipeline_env       function  dict of env vars wiring Redis + namespace + stand-in
    pipeline_settings  function  ``Settings`` built from ``pipeline_env``
    producer           function  ``producers.Producer`` on those settings
    start_worker       function  factory(**env_overrides, concurrency=4, pool="threads")
                                 -> ManagedProcess of ``voucherify-ingest worker``, ready
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator

import pytest

from producers import Producer
from tests.support.procs import ManagedProcess
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn

APP_ID = "test-app"
APP_TOKEN = "test-token-s3cr3t-value"  # noqa: S105 - the stand-in's own credentials
WORKER_READY_TIMEOUT_S = 30.0


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn(APP_ID, APP_TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


def make_env(redis_url: str, namespace: str, api_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "REDIS_URL": redis_url,
        "VOUCHERIFY_API_URL": api_url,
        "VOUCHERIFY_APP_ID": APP_ID,
        "VOUCHERIFY_APP_TOKEN": APP_TOKEN,
        "VOUCHERIFY_QUEUE": f"{namespace}-events",
        "VOUCHERIFY_KEY_PREFIX": namespace,
        "VOUCHERIFY_RATE_LIMIT": "off",
        "VOUCHERIFY_BACKOFF_BASE_S": "0.2",
        "VOUCHERIFY_BACKOFF_MAX_S": "1",
        "VOUCHERIFY_READ_TIMEOUT_S": "2",
        "VOUCHERIFY_CONNECT_TIMEOUT_S": "1",
        "VOUCHERIFY_RATE_LIMIT_MAX_WAIT_S": "2",
        "VOUCHERIFY_VISIBILITY_TIMEOUT_S": "20",
        "VOUCHERIFY_RESTORE_INTERVAL_S": "1",
        "VOUCHERIFY_LOG_FORMAT": "json",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@pytest.fixture
def pipeline_env(redis_url: str, namespace: str, standin: StandIn) -> dict[str, str]:
    return make_env(redis_url, namespace, standin.url)


@pytest.fixture
def pipeline_settings(pipeline_env: dict[str, str]) -> Settings:
    return Settings.from_env(pipeline_env)


@pytest.fixture
def producer(pipeline_settings: Settings) -> Iterator[Producer]:
    instance = Producer(pipeline_settings)
    try:
        yield instance
    finally:
        instance.close()


def worker_argv(concurrency: int = 4, pool: str = "threads") -> list[str]:
    return [sys.executable, "-m", "voucherify_ingest.cli", "worker", "-c", str(concurrency),
            "-P", pool]


@pytest.fixture
def start_worker(
    make_process: Callable[..., ManagedProcess], pipeline_env: dict[str, str]
) -> Callable[..., ManagedProcess]:
    def factory(*, concurrency: int = 4, pool: str = "threads", name: str | None = None,
                wait: bool = True, **overrides: str) -> ManagedProcess:
        env = {**pipeline_env, **{k: str(v) for k, v in overrides.items()}}
        proc = make_process(worker_argv(concurrency, pool), env=env, name=name or "worker")
        if wait:
            proc.wait_for_output('"worker_ready"', timeout=WORKER_READY_TIMEOUT_S)
        return proc

    return factory


def pipeline_idle(client, settings: Settings) -> bool:
    """Nothing queued, waiting for a retry, or handed to a worker and not yet acked.

    A task acks (late) only after its POST and outcome write, so when this holds no POST of
    these events can still be on its way: what the stand-in has is final."""
    prefix = settings.key_prefix
    return (client.llen(settings.queue) == 0
            and client.zcard(f"{prefix}:delayed") == 0
            and client.hlen(f"{prefix}:unacked") == 0)


def wait_quiet(client, settings: Settings, timeout: float = 20.0) -> None:
    """Wait (bounded) until :func:`pipeline_idle` holds on two polls in a row: the observable
    replacement for a fixed "anything sent twice would show up now" sleep."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = seen + 1 if pipeline_idle(client, settings) else 0
        if seen >= 2:
            return
        time.sleep(0.05)
    raise AssertionError(f"the pipeline did not go idle within {timeout}s")
