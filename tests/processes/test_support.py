"""Tests for the test harness itself: private redis-server and ManagedProcess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import kombu
import pytest
import redis

from tests.support.procs import ManagedProcess, ProcessOutputError, pid_alive
from tests.support.redis_server import (
    RedisServer,
    RedisServerUnavailable,
    delete_namespace_keys,
    find_redis_server,
    no_retry,
)

PY = sys.executable
REPO_ROOT = Path(__file__).resolve().parents[2]


def _wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def _assert_no_process(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ---------------------------------------------------------------------------
# RedisServer
# ---------------------------------------------------------------------------
def test_private_redis_starts(private_redis: RedisServer) -> None:
    assert private_redis.private
    assert private_redis.port != 6379
    assert private_redis.url == f"redis://127.0.0.1:{private_redis.port}/0"
    assert pid_alive(private_redis.pid)
    client = private_redis.client()
    try:
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert int(client.info("server")["tcp_port"]) == private_redis.port
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
    finally:
        client.close()


def test_stop_leaves_no_process_and_removes_dir() -> None:
    server = RedisServer(appendonly=True)
    try:
        server.start()
    except RedisServerUnavailable as exc:  # no binary on this machine: fail, never skip
        pytest.fail(str(exc), pytrace=False)
    pid, directory = server.pid, server.dir
    assert directory.is_dir()
    server.stop()
    _assert_no_process(pid)
    assert not directory.exists()
    server.stop()  # idempotent


def test_restart_keeps_aof_data(private_redis: RedisServer) -> None:
    port, old_pid = private_redis.port, private_redis.pid
    client = private_redis.client()
    try:
        client.set("survivor", "1")
        client.rpush("list", "a", "b")
    finally:
        client.close()

    private_redis.restart(down_s=0.2)
    assert private_redis.port == port
    assert private_redis.pid != old_pid
    _assert_no_process(old_pid)
    client = private_redis.client()
    try:
        assert client.get("survivor") == b"1"
        assert client.lrange("list", 0, -1) == [b"a", b"b"]
        client.set("after-restart", "2")
    finally:
        client.close()

    # A crash (SIGKILL) keeps what reached the AOF file (written before the
    # reply; only fsync is per second), and start() brings it back.
    crashed_pid = private_redis.pid
    private_redis.kill()
    _assert_no_process(crashed_pid)
    with pytest.raises(redis.ConnectionError):
        c = private_redis.client(socket_connect_timeout=1, retry=no_retry())
        try:
            c.ping()
        finally:
            c.close()
    private_redis.start()
    assert private_redis.port == port
    client = private_redis.client()
    try:
        assert client.get("after-restart") == b"2"
        assert client.get("survivor") == b"1"
    finally:
        client.close()


def test_maxmemory_policy_and_extra_args(make_redis_server) -> None:
    server = make_redis_server(
        appendonly=False,
        maxmemory="50mb",
        maxmemory_policy="allkeys-lru",
        extra_args=["--maxmemory-samples", "7"],
    )
    client = server.client(decode_responses=True)
    try:
        cfg = client.config_get("maxmemory*")
        assert cfg["maxmemory-policy"] == "allkeys-lru"
        assert int(cfg["maxmemory"]) == 50 * 1024 * 1024
        assert cfg["maxmemory-samples"] == "7"
        assert client.config_get("appendonly")["appendonly"] == "no"
    finally:
        client.close()


def test_password_required(make_redis_server) -> None:
    password = "s3cr:et@/pw"  # characters that need quoting in the URL
    server = make_redis_server(password=password)
    assert server.url.startswith("redis://:")
    assert password not in server.url  # quoted

    anon = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5, retry=no_retry())
    try:
        with pytest.raises(redis.AuthenticationError):
            anon.ping()
    finally:
        anon.close()

    wrong = redis.Redis(
        host="127.0.0.1", port=server.port, password="nope", socket_timeout=5, retry=no_retry()
    )
    try:
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()
    finally:
        wrong.close()

    client = redis.Redis.from_url(server.url)
    try:
        assert client.ping()
    finally:
        client.close()

    with kombu.Connection(server.url) as conn:
        conn.connect()
        assert conn.connected


def test_tls_with_redis_py_and_kombu(make_redis_server) -> None:
    server = make_redis_server(tls=True, password="pw")
    assert server.url.startswith("rediss://:pw@127.0.0.1:")
    assert "ssl_cert_reqs=required" in server.url
    assert server.ca_file is not None and Path(server.ca_file).is_file()
    assert f"ssl_ca_certs={server.ca_file}" in server.url

    client = redis.Redis.from_url(server.url)
    try:
        assert client.ping()
        client.set("tls-key", "tls-value")
        assert client.get("tls-key") == b"tls-value"
    finally:
        client.close()

    # Plain TCP to the TLS port does not work.
    plain = redis.Redis(
        host="127.0.0.1", port=server.port, password="pw",
        socket_timeout=2, socket_connect_timeout=2, retry=no_retry(),
    )
    try:
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            plain.ping()
    finally:
        plain.close()

    # Without the CA the self-signed certificate is rejected.
    no_ca_url = server.url.split("?", 1)[0] + "?ssl_cert_reqs=required"
    no_ca = redis.Redis.from_url(no_ca_url, socket_timeout=5, retry=no_retry())
    try:
        with pytest.raises(redis.ConnectionError):
            no_ca.ping()
    finally:
        no_ca.close()

    with kombu.Connection(server.url) as conn:
        conn.connect()
        queue = conn.SimpleQueue("tls-queue")
        try:
            queue.put({"hello": "tls"})
            message = queue.get(timeout=5)
            message.ack()
            assert message.payload == {"hello": "tls"}
        finally:
            queue.close()


def test_tls_cert_reqs_upper_case_form_is_kombu_only(make_redis_server) -> None:
    """Documents why the URL uses ``ssl_cert_reqs=required``."""
    server = make_redis_server(tls=True)
    upper = server.url.replace("ssl_cert_reqs=required", "ssl_cert_reqs=CERT_REQUIRED")
    with kombu.Connection(upper) as conn:
        conn.connect()
        assert conn.connected
    client = redis.Redis.from_url(upper, retry=no_retry())
    try:
        with pytest.raises(redis.RedisError, match="Invalid SSL Certificate Requirements"):
            client.ping()
    finally:
        client.close()


def test_session_fixture_and_namespace(redis_server, redis_client, redis_url, namespace) -> None:
    assert redis_url == redis_server.url
    assert namespace.startswith("t") and len(namespace) == 9
    if "REDIS_URL" not in os.environ:
        assert redis_server.private
        assert ":6379/" not in redis_url
    redis_client.set(f"{namespace}:a", "1")
    redis_client.set(f"_kombu.binding.{namespace}", "1")
    other = f"other{namespace[::-1]}"  # must survive
    redis_client.set(other, "keep")
    try:
        assert delete_namespace_keys(redis_client, namespace) == 2
        assert redis_client.exists(f"{namespace}:a", f"_kombu.binding.{namespace}") == 0
        assert redis_client.get(other) == b"keep"
    finally:
        redis_client.delete(other)
    with pytest.raises(ValueError):
        delete_namespace_keys(redis_client, "*")


def test_find_redis_server_honours_env(monkeypatch, tmp_path) -> None:

    monkeypatch.setenv("REDIS_SERVER_BIN", str(tmp_path / "missing"))
    with pytest.raises(RedisServerUnavailable, match="REDIS_SERVER_BIN"):
        find_redis_server()


# ---------------------------------------------------------------------------
# ManagedProcess
# ---------------------------------------------------------------------------
def test_managed_process_captures_output(make_process) -> None:
    code = textwrap.dedent(
        """
        import os, sys, time
        print("to-stdout", os.environ["GREETING"])
        print("to-stderr", file=sys.stderr)
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    proc = make_process([PY, "-c", code], env={"GREETING": "hi"}, name="echo")
    assert proc.wait_for_output("ready", timeout=10) == "ready"
    out = proc.output()
    assert "to-stdout hi" in out
    assert "to-stderr" in out
    assert proc.returncode is None
    assert os.getpgid(proc.pid) == proc.pid  # own process group

    mark = proc.mark()
    with pytest.raises(ProcessOutputError):
        proc.wait_for_output("ready", timeout=0.3, since=mark)

    rc = proc.terminate(timeout=5)
    assert rc == -signal.SIGTERM
    _assert_no_process(proc.pid)


def test_wait_for_output_times_out_cleanly(make_process) -> None:
    proc = make_process([PY, "-c", "import time; print('started'); time.sleep(60)"])
    proc.wait_for_output("started", timeout=10)
    t0 = time.monotonic()
    with pytest.raises(ProcessOutputError, match="timed out") as info:
        proc.wait_for_output("never-printed", timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert "started" in str(info.value)  # log tail in the message
    assert proc.returncode is None  # timeout does not kill


def test_wait_for_output_reports_early_exit(make_process) -> None:
    proc = make_process([PY, "-c", "import sys; print('boom'); sys.exit(3)"])
    t0 = time.monotonic()
    with pytest.raises(ProcessOutputError, match="exited with 3") as info:
        proc.wait_for_output("never-printed", timeout=30)
    assert time.monotonic() - t0 < 10
    assert "boom" in str(info.value)
    assert proc.returncode == 3


def test_terminate_escalates_to_sigkill(make_process) -> None:
    code = textwrap.dedent(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring", flush=True)
        time.sleep(60)
        """
    )
    proc = make_process([PY, "-c", code])
    proc.wait_for_output("ignoring", timeout=10)
    t0 = time.monotonic()
    assert proc.terminate(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 5
    _assert_no_process(proc.pid)


def test_kill_leaves_no_process(make_process) -> None:
    # The child spawns a grandchild in the same process group.
    code = textwrap.dedent(
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("grandchild", child.pid, flush=True)
        time.sleep(60)
        """
    )
    proc = make_process([PY, "-c", code])
    proc.wait_for_output("grandchild", timeout=10)
    grandchild = int(proc.output().split("grandchild", 1)[1].split()[0])
    assert pid_alive(grandchild)
    pid = proc.pid

    rc = proc.kill()
    assert rc == -signal.SIGKILL
    _assert_no_process(pid)
    assert _wait_dead(grandchild), f"grandchild {grandchild} survived kill()"


def test_atexit_hook_kills_leftovers(tmp_path) -> None:
    """A process that exits without cleaning up still leaves nothing running."""
    code = textwrap.dedent(
        f"""
        import sys
        from tests.support.procs import ManagedProcess
        from tests.support.redis_server import RedisServer
        p = ManagedProcess([sys.executable, "-c", "import time; time.sleep(60)"],
                           log_dir={str(tmp_path)!r}).start()
        print("proc", p.pid)
        try:
            r = RedisServer().start()
            print("redis", r.pid, r.dir)
        except Exception as exc:
            print("no-redis", exc)
        """
    )
    res = subprocess.run(
        [PY, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    assert _wait_dead(int(lines["proc"])), res.stdout
    if "redis" in lines:
        redis_pid, redis_dir = lines["redis"].split(" ", 1)
        assert _wait_dead(int(redis_pid)), res.stdout
        assert not Path(redis_dir).exists()


def test_managed_process_context_manager(tmp_path) -> None:
    with ManagedProcess(
        [PY, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        log_path=tmp_path / "cm.log",
    ) as proc:
        proc.wait_for_output("up", timeout=10)
        pid = proc.pid
    _assert_no_process(pid)
    assert (tmp_path / "cm.log").read_text().strip() == "up"
