"""Enqueue after ``os.fork()`` (gunicorn/uWSGI preforking): each child its own connection and
its own spool, nothing shared with the parent, on a real Redis."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Callable

import pytest

from producers import Producer
from producers.spool_files import lock_owner
from voucherify_ingest.settings import Settings

CHILD_DEADLINE_S = 20


def _envelope(raw: bytes) -> dict:
    args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
    return args[0]


def _event(n: int) -> dict:
    return {"event": "signed_up", "customer": {"source_id": f"user-{n}"}, "metadata": {"n": n}}


def _fork(work: Callable[[], dict]) -> tuple[int, int]:
    """Run ``work`` in a forked child; return (pid, read end of a pipe carrying its JSON)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(read_fd)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
            signal.alarm(CHILD_DEADLINE_S)  # a deadlocked child dies instead of hanging
            result = work()
        except BaseException as exc:  # report, do not raise into the parent's test run
            result, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
        with os.fdopen(write_fd, "w") as out:
            json.dump(result, out)
        os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _join(pid: int, read_fd: int) -> dict:
    """Wait for the child (bounded), then read what it wrote (well under a pipe's buffer)."""
    deadline = time.monotonic() + CHILD_DEADLINE_S + 5
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not exit")
        time.sleep(0.02)
    with os.fdopen(read_fd) as src:
        text = src.read()
    result = json.loads(text) if text else {"error": f"no output, wait status {status}"}
    assert "error" not in result, result["error"]
    assert os.waitstatus_to_exitcode(status) == 0
    return result


def test_children_forked_from_a_connected_producer_use_their_own_connections(
    redis_url, redis_client, namespace
):
    settings = Settings.from_env({}, redis_url=redis_url, queue=f"{namespace}-events",
                                 key_prefix=namespace)
    producer = Producer(settings)
    first = producer.enqueue_event(_event(0))  # the parent's pool now holds a live socket
    parent_client_id = producer.redis.client_id()

    def child_work() -> dict:
        ids = [producer.enqueue_event(_event(n)) for n in range(300)]
        ids += producer.enqueue_events([_event(n) for n in range(100)])
        return {"ids": ids, "client_id": producer.redis.client_id(), "pid": os.getpid()}

    children = [_fork(child_work) for _ in range(4)]
    # The parent keeps using its socket while the children use theirs.
    parent_ids = [first] + [producer.enqueue_event(_event(n)) for n in range(300)]
    results = [_join(pid, fd) for pid, fd in children]
    assert producer.redis.client_id() == parent_client_id  # the parent's socket still works

    client_ids = {parent_client_id} | {r["client_id"] for r in results}
    assert len(client_ids) == 5, "a child talked to Redis over the parent's connection"
    expected = set(parent_ids).union(*(r["ids"] for r in results))
    raw = redis_client.lrange(settings.queue, 0, -1)
    queued = [_envelope(m)["id"] for m in raw]  # every message intact and decodable
    assert len(queued) == len(expected) == 301 + 4 * 400
    assert set(queued) == expected
    producer.close()


def test_a_child_spools_to_its_own_file_and_the_parent_keeps_its_lock(
    private_redis, tmp_path, namespace
):
    spool_dir = tmp_path / "spool"
    settings = Settings.from_env({}, redis_url=private_redis.url, queue=f"{namespace}-events",
                                 spool_dir=str(spool_dir), redis_timeout_s=0.5)
    producer = Producer(settings)
    private_redis.kill()
    parent_ids = [producer.enqueue_event(_event(n)) for n in range(3)]  # drainer thread runs
    parent_owner = producer.spool.owner

    def child_work() -> dict:
        ids = [producer.enqueue_event(_event(n)) for n in range(10, 12)]
        return {"ids": ids, "owner": producer.spool.owner}  # then exits without close()

    child = _join(*_fork(child_work))
    assert child["owner"] != parent_owner
    segments = {p.name.split(".")[0] for p in spool_dir.glob("*.seg")}
    assert segments == {parent_owner, child["owner"]}
    assert lock_owner(spool_dir, parent_owner) is None, "the child released the parent's lock"

    client = private_redis.start().client()
    deadline = time.monotonic() + 20
    while client.llen(settings.queue) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    queued = [_envelope(m)["id"] for m in reversed(client.lrange(settings.queue, 0, -1))]
    # The parent drains its own spool, then adopts what the exited child left.
    assert queued == parent_ids + child["ids"]
    producer.close()
    client.close()


@pytest.mark.parametrize("held", ["spool", "default"])
def test_a_fork_while_another_thread_holds_a_lock_does_not_deadlock_the_child(
    private_redis, tmp_path, namespace, monkeypatch, held
):
    from producers import producer as producer_module

    settings = Settings.from_env({}, redis_url=private_redis.url, queue=f"{namespace}-events",
                                 spool_dir=str(tmp_path / "spool"), redis_timeout_s=0.5)
    producer = Producer(settings)
    monkeypatch.setattr(producer_module, "_default", None)
    monkeypatch.setenv("REDIS_URL", private_redis.url)  # what get_producer() builds from
    monkeypatch.setenv("VOUCHERIFY_QUEUE", settings.queue)
    monkeypatch.setenv("VOUCHERIFY_SPOOL_DIR", settings.spool_dir)
    monkeypatch.setenv("VOUCHERIFY_REDIS_TIMEOUT_S", "0.5")
    private_redis.kill()
    producer.enqueue_event(_event(0))
    # As if another thread were mid-append (or mid-first-use) at the moment of the fork.
    lock = producer.spool._lock if held == "spool" else producer_module._default_lock
    lock.acquire()
    try:
        def child_work() -> dict:
            target = producer if held == "spool" else producer_module.get_producer()
            return {"id": target.enqueue_event(_event(1))}

        result = _join(*_fork(child_work))
    finally:
        lock.release()
    assert result["id"]
    producer.close()
