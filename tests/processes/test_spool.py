"""The producer's local spool on a real private Redis that is killed, frozen and restarted.

Assertions are on what is on disk (fsync'd segment files, read back independently of the
spool's own reader) and on what is in Redis, in order.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest

from producers import BrokerUnavailable, IngestError, Producer, SpoolFull
from producers.spool import Spool
from producers.spool_files import flush_dead, redis_target
from tests.support.pipeline import make_env, worker_argv
from voucherify_ingest.errors import ConfigError
from voucherify_ingest.settings import Settings

CHILD_TIMEOUT_S = 30
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _event(n: int) -> dict:
    return {"event": "order_paid", "customer": {"source_id": f"user-{n}"},
            "metadata": {"n": n, "note": "x" * 200}}


def _envelope(raw: bytes | str) -> dict:
    """A kombu message on the queue list -> the task's single argument (our envelope)."""
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return args[0]


def _queued_ids(client, queue: str) -> list[str]:
    """Event ids in the order a worker takes them (LPUSH at the head, BRPOP from the tail)."""
    return [_envelope(raw)["id"] for raw in reversed(client.lrange(queue, 0, -1))]


def _disk_ids(directory: Path) -> list[str]:
    """Event ids in the spool's segment files, parsed here (not by the spool's reader)."""
    ids = []
    segments = sorted(directory.glob("*.seg"), key=lambda p: (p.name.rsplit(".", 2)[0],
                                                            int(p.name.rsplit(".", 2)[1])))
    for seg in segments:
        lines = seg.read_bytes().split(b"\n")
        assert json.loads(lines[0])["format"] == "voucherify-spool/1"
        for line in lines[1:]:
            if not line:
                continue
            crc, _, message = line.partition(b" ")
            assert int(crc, 16) == zlib.crc32(message)
            ids.append(_envelope(message)["id"])
    return ids


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def _frozen(server):
    """Redis stops answering (SIGSTOP): connections open, nothing comes back."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


@pytest.fixture
def spool_dir(tmp_path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def make_producer(private_redis, namespace, spool_dir):
    producers = []

    def factory(**overrides) -> Producer:
        values = {"redis_url": private_redis.url, "queue": f"{namespace}-events",
                  "key_prefix": namespace, "spool_dir": str(spool_dir),
                  "redis_timeout_s": 0.5, **overrides}
        producer = Producer(Settings.from_env({}, **values))
        producers.append(producer)
        return producer

    yield factory
    for producer in producers:
        producer.close()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "voucherify_ingest.cli", *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
    )


def test_killed_redis_spools_fsyncd_events_and_drains_them_in_order(
    private_redis, make_producer, spool_dir
):
    producer = make_producer()
    client = private_redis.client()
    first = producer.enqueue_event(_event(0))
    private_redis.kill()
    ids = []
    for n in range(1, 41):
        started = time.monotonic()
        ids.append(producer.enqueue_event(_event(n)))
        assert time.monotonic() - started < 0.5, "an enqueue hung while Redis was down"
    assert _disk_ids(spool_dir) == ids  # on disk, in order, before anything was drained
    assert producer.spool.pending

    private_redis.start()
    _wait(lambda: not producer.spool.pending, 15, "the spool to drain")
    assert _queued_ids(client, producer.queue) == [first, *ids]
    assert list(spool_dir.glob("*.seg")) == []

    after = producer.enqueue_event(_event(99))  # Redis is back: straight to the queue
    assert _queued_ids(client, producer.queue)[-1] == after
    assert list(spool_dir.glob("*.seg")) == []
    client.close()


def test_frozen_redis_costs_one_timeout_then_the_breaker_spools_at_disk_speed(
    private_redis, make_producer, spool_dir
):
    producer = make_producer(redis_timeout_s=0.5)
    client = private_redis.client()
    producer.enqueue_event(_event(0))  # a warm connection, as in a running app
    with _frozen(private_redis):
        started = time.monotonic()
        ids = [producer.enqueue_event(_event(1))]
        first_s = time.monotonic() - started
        later = []
        for n in range(2, 32):
            started = time.monotonic()
            ids.append(producer.enqueue_event(_event(n)))
            later.append(time.monotonic() - started)
        assert 0.4 < first_s < 2.0, f"first call took {first_s:.3f}s"
        assert max(later) < 0.25, f"later calls waited on Redis: {max(later):.3f}s"
        assert _disk_ids(spool_dir) == ids
    _wait(lambda: not producer.spool.pending, 15, "the spool to drain")
    queued = _queued_ids(client, producer.queue)
    # The LPUSH that timed out may still have been run by Redis when it woke: the same event
    # id then appears twice, and the worker's delivery ledger sends it once.
    assert list(dict.fromkeys(queued))[1:] == ids
    client.close()


def test_spool_off_raises_broker_unavailable_promptly(private_redis, make_producer):
    producer = make_producer(spool_dir="", redis_timeout_s=0.5)
    assert producer.spool is None
    producer.enqueue_event(_event(0))
    with _frozen(private_redis):
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not answer"):
            producer.enqueue_event(_event(1))
        assert time.monotonic() - started < 2.0
    private_redis.kill()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        producer.enqueue_event(_event(2))
    assert time.monotonic() - started < 2.0


def test_full_spool_raises_spool_full_and_keeps_what_it_accepted(
    private_redis, make_producer, spool_dir
):
    producer = make_producer(spool_max_bytes=6000)
    client = private_redis.client()
    private_redis.kill()
    accepted = []
    with pytest.raises(SpoolFull) as raised:
        for n in range(100):
            accepted.append(producer.enqueue_event(_event(n)))
    assert isinstance(raised.value, IngestError)
    assert "NOT stored" in str(raised.value)
    assert 2 <= len(accepted) < 10
    assert _disk_ids(spool_dir) == accepted
    assert sum(p.stat().st_size for p in spool_dir.glob("*.seg")) <= 6000

    private_redis.start()
    _wait(lambda: not producer.spool.pending, 15, "the spool to drain")
    assert _queued_ids(client, producer.queue) == accepted
    client.close()


def test_concurrent_enqueues_during_an_outage_all_survive(
    private_redis, make_producer, spool_dir
):
    producer = make_producer()
    client = private_redis.client()
    private_redis.kill()
    ids: list[str] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        for n in range(25):
            event_id = producer.enqueue_event(_event(k * 100 + n))
            with lock:
                ids.append(event_id)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(_disk_ids(spool_dir)) == sorted(ids) and len(ids) == 200
    private_redis.start()
    _wait(lambda: not producer.spool.pending, 15, "the spool to drain")
    assert sorted(_queued_ids(client, producer.queue)) == sorted(ids)
    client.close()


_CHILD = """
import os, sys
from producers import Producer
from voucherify_ingest.errors import ConfigError
from voucherify_ingest.settings import Settings
producer = Producer(Settings.from_env())
for n in range(int(sys.argv[1])):
    print(producer.enqueue_event({"event": "signed_up", "customer": {"source_id": f"u{n}"}}))
sys.stdout.flush()
os._exit(0)  # a crash: no close(), no atexit; the kernel drops the flock
"""


def _dead_child_spool(private_redis, namespace, spool_dir, count: int) -> list[str]:
    """A process that spooled ``count`` events while Redis was down, then died."""
    env = {"REDIS_URL": private_redis.url, "VOUCHERIFY_QUEUE": f"{namespace}-events",
           "VOUCHERIFY_SPOOL_DIR": str(spool_dir), "VOUCHERIFY_REDIS_TIMEOUT_S": "0.5"}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(count)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if UUID_RE.fullmatch(line)]


def test_cli_flushes_a_dead_process_spool_in_order_and_skips_a_live_one(
    private_redis, namespace, spool_dir, redis_server
):
    queue = f"{namespace}-events"
    private_redis.kill()
    ids = _dead_child_spool(private_redis, namespace, spool_dir, 12)
    assert len(ids) == 12 and _disk_ids(spool_dir) == ids
    private_redis.start()

    # A live process's spool: it holds its lock (its Redis client never answers).
    dead_port = Settings.from_env({}, redis_url="redis://127.0.0.1:1/0")
    from voucherify_ingest.redis_conn import make_redis
    live = Spool(spool_dir, client=make_redis(dead_port, timeout_s=0.2), queue=queue,
                 max_bytes=1 << 20, target=redis_target(private_redis.url))
    live.append([json.dumps({"body": "not-flushed"})])

    env = {"REDIS_URL": private_redis.url, "VOUCHERIFY_SPOOL_DIR": str(spool_dir),
           "VOUCHERIFY_LOG_FORMAT": "json"}
    status = _cli("spool", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    rows = {row["owner"]: row for row in json.loads(status.stdout)}
    assert sorted((r["live"], r["records"]) for r in rows.values()) == [(False, 12), (True, 1)]

    flushed = _cli("spool", "flush", env=env)
    assert flushed.returncode == 0, flushed.stderr
    assert "flushed 12 event(s)" in flushed.stdout
    assert f"skipped {live.owner}: in use by a live process" in flushed.stdout
    client = private_redis.client()
    assert _queued_ids(client, queue) == ids
    remaining = sorted(p.name for p in spool_dir.iterdir())
    assert remaining == [f"{live.owner}.000001.seg", f"{live.owner}.lock"]

    live.close(drain_timeout_s=0.5)  # cannot drain: leaves its file for a flush
    assert client.llen(queue) == 12
    again = _cli("spool", "flush", env=env)
    assert again.returncode == 0, again.stderr
    assert "flushed 1 event(s)" in again.stdout
    assert client.llen(queue) == 13
    assert list(spool_dir.iterdir()) == []
    client.close()


def test_cli_refuses_a_spool_written_for_another_redis(private_redis, namespace, spool_dir,
                                                       make_redis_server):
    private_redis.kill()
    ids = _dead_child_spool(private_redis, namespace, spool_dir, 3)
    other = make_redis_server(appendonly=False)
    env = {"REDIS_URL": other.url, "VOUCHERIFY_SPOOL_DIR": str(spool_dir)}
    refused = _cli("spool", "flush", env=env)
    assert refused.returncode == 1
    assert "spooled for " + redis_target(private_redis.url) in refused.stderr
    assert _disk_ids(spool_dir) == ids
    forced = _cli("spool", "flush", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    client = other.client()
    assert _queued_ids(client, f"{namespace}-events") == ids
    client.close()


def test_cli_flush_with_redis_down_fails_clearly_and_keeps_the_files(
    make_redis_server, namespace, spool_dir
):
    secret = "spool-s3cret-pw"
    server = make_redis_server(password=secret)
    server.kill()
    ids = _dead_child_spool(server, namespace, spool_dir, 2)
    env = {"REDIS_URL": server.url, "VOUCHERIFY_SPOOL_DIR": str(spool_dir)}
    failed = _cli("spool", "flush", env=env)
    assert failed.returncode == 1
    assert "did not answer" in failed.stderr
    assert secret not in failed.stdout + failed.stderr
    assert _disk_ids(spool_dir) == ids


def test_a_new_producer_adopts_what_a_dead_process_left(
    private_redis, namespace, spool_dir, make_producer
):
    private_redis.kill()
    ids = _dead_child_spool(private_redis, namespace, spool_dir, 5)
    private_redis.start()
    producer = make_producer()  # same directory and Redis: its thread drains the leftovers
    client = private_redis.client()
    _wait(lambda: client.llen(producer.queue) == 5, 15, "the dead spool to be adopted")
    assert _queued_ids(client, producer.queue) == ids
    _wait(lambda: list(spool_dir.iterdir()) == [], 5, "the dead spool's files to go")
    client.close()


def test_torn_tail_is_skipped_and_a_corrupt_line_is_kept_not_pushed(
    private_redis, namespace, spool_dir
):
    private_redis.kill()
    ids = _dead_child_spool(private_redis, namespace, spool_dir, 4)
    private_redis.start()
    (segment,) = spool_dir.glob("*.seg")
    lines = segment.read_bytes().split(b"\n")
    assert b'"lang":"py"' in lines[2]
    lines[2] = lines[2].replace(b'"lang":"py"', b'"lang":"pX"')  # bit rot in the 2nd record
    segment.write_bytes(b"\n".join(lines) + b"0badc0de {\"torn")  # and a write cut short
    client = private_redis.client()
    (report,) = flush_dead(client, spool_dir, target=redis_target(private_redis.url))
    assert (report.pushed, report.corrupt, report.torn) == (3, 1, 1)
    assert _queued_ids(client, f"{namespace}-events") == [ids[0], *ids[2:]]
    (kept,) = spool_dir.glob("*.corrupt")
    assert b'"lang":"pX"' in kept.read_bytes()
    client.close()


@pytest.mark.e2e
def test_a_drain_repeated_after_a_crash_is_delivered_once_by_a_real_worker(
    private_redis, namespace, spool_dir, make_producer, make_process, standin
):
    producer = make_producer()
    private_redis.kill()
    ids = [producer.enqueue_event(_event(n)) for n in range(20)]
    (segment,) = spool_dir.glob("*.seg")
    # What a crash between the LPUSH and the unlink leaves behind: the same segment again,
    # under an owner that no longer runs.
    shutil.copy(segment, spool_dir / "crashed-1-abcdef.000001.seg")
    private_redis.start()
    _wait(lambda: not producer.spool.pending, 15, "the spool to drain")
    env = {"REDIS_URL": private_redis.url, "VOUCHERIFY_SPOOL_DIR": str(spool_dir)}
    # The CLI or the producer's own thread (which adopts dead owners' spools) pushes the copy.
    assert _cli("spool", "flush", env=env).returncode == 0
    client = private_redis.client()
    _wait(lambda: client.llen(producer.queue) == 40, 15, "the copy to be pushed")
    assert sorted(_queued_ids(client, producer.queue)) == sorted(ids * 2)

    worker_env = make_env(private_redis.url, namespace, standin.url)
    proc = make_process(worker_argv(concurrency=4), env=worker_env, name="worker")
    proc.wait_for_output('"worker_ready"', timeout=30)
    assert standin.wait_for_delivered(20, timeout=60)
    _wait(lambda: client.llen(producer.queue) == 0, 30, "the queue to empty")
    time.sleep(1.5)  # a second delivery of a duplicate would show up by now
    counts = standin.delivered_ids()
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, "a re-sent spool record was delivered twice"
    client.close()


def test_an_unusable_spool_directory_fails_at_start_up(tmp_path, redis_url):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ConfigError, match="VOUCHERIFY_SPOOL_DIR"):
        Producer(Settings.from_env({}, redis_url=redis_url, spool_dir=str(not_a_dir / "spool")))
