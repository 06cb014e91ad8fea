"""A Redis master, its replicas and three sentinels on loopback, every process by its own pid.

``redis-server`` is found like the suite's private Redis (``find_redis_server``); a sentinel is
``redis-server <conf> --sentinel``. Configs go to a temporary directory (sentinels rewrite
theirs), ports are free ones on 127.0.0.1, and :meth:`SentinelCluster.stop` kills every process
it started (SIGTERM, then SIGKILL) and removes the directory.

    with SentinelCluster(tmp_path) as cluster:
        cluster.url          # sentinel://127.0.0.1:p1;sentinel://127.0.0.1:p2;...
        cluster.kill_master()
        cluster.wait_for_failover(old, timeout_s=30)
"""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.support.procs import ManagedProcess
from tests.support.redis_server import _free_port, find_redis_server

HOST = "127.0.0.1"
MASTER_NAME = "vi-master"


class SentinelClusterError(RuntimeError):
    pass


class SentinelCluster:
    def __init__(
        self,
        directory: Path,
        *,
        replicas: int = 2,
        sentinels: int = 3,
        master_name: str = MASTER_NAME,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10_000,
        min_replicas_to_write: int = 0,
    ):
        self.dir = Path(directory)
        self.replica_count = replicas
        self.sentinel_count = sentinels
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.min_replicas_to_write = min_replicas_to_write
        self.binary = find_redis_server()
        self.servers: dict[int, ManagedProcess] = {}  # port -> process
        self.sentinels: dict[int, ManagedProcess] = {}
        self.master_port = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> SentinelCluster:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.master_port = self._start_server(None)
            for _ in range(self.replica_count):
                self._start_server(self.master_port)
            self.wait_replicas_online(self.master_port, self.replica_count, timeout_s=20)
            for _ in range(self.sentinel_count):
                self._start_sentinel()
            self._wait_sentinels_see_replicas(timeout_s=20)
        except BaseException:
            self.stop()
            raise
        return self

    def _server_conf(self, port: int, master_port: int | None) -> str:
        lines = [
            f"port {port}",
            f"bind {HOST}",
            f"dir {self.dir / str(port)}",
            'save ""',
            "appendonly no",
            "protected-mode no",
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
        ]
        if self.min_replicas_to_write:
            lines += [f"min-replicas-to-write {self.min_replicas_to_write}",
                      "min-replicas-max-lag 10"]
        if master_port is not None:
            lines.append(f"replicaof {HOST} {master_port}")
        return "\n".join(lines) + "\n"

    def _start_server(self, master_port: int | None) -> int:
        port = _free_port()
        (self.dir / str(port)).mkdir()
        conf = self.dir / f"redis-{port}.conf"
        conf.write_text(self._server_conf(port, master_port))
        proc = ManagedProcess([self.binary, str(conf)], name=f"redis-{port}",
                              log_dir=self.dir).start()
        self.servers[port] = proc
        self._wait_ping(port, proc)
        return port

    def _start_sentinel(self) -> int:
        port = _free_port()
        conf = self.dir / f"sentinel-{port}.conf"
        conf.write_text(
            "\n".join([
                f"port {port}",
                f"bind {HOST}",
                f"dir {self.dir}",
                "protected-mode no",
                f"sentinel monitor {self.master_name} {HOST} {self.master_port} 2",
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {self.master_name} 1",
            ]) + "\n"
        )
        proc = ManagedProcess([self.binary, str(conf), "--sentinel"], name=f"sentinel-{port}",
                              log_dir=self.dir).start()
        self.sentinels[port] = proc
        self._wait_ping(port, proc)
        return port

    def _wait_ping(self, port: int, proc: ManagedProcess, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                if not proc.is_running():
                    raise SentinelClusterError(f"{proc.name} exited: {proc.tail()}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise SentinelClusterError(f"{proc.name} did not answer PING: {proc.tail()}")

    def stop(self) -> None:
        """Terminate every process this cluster started, by its pid."""
        for proc in [*self.sentinels.values(), *self.servers.values()]:
            if proc.started and proc.returncode is None:
                proc.terminate(timeout=5)

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- views ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://{HOST}:{port}" for port in self.sentinels)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host=HOST, port=port, socket_timeout=2, socket_connect_timeout=1)

    def master_by_sentinels(self) -> int | None:
        """The master's port as a majority of the sentinels name it (None without one)."""
        votes: dict[int, int] = {}
        for port in self.sentinels:
            client = self.client(port)
            try:
                host_port = client.sentinel_get_master_addr_by_name(self.master_name)
                if host_port:
                    voted = int(host_port[1])
                    votes[voted] = votes.get(voted, 0) + 1
            except redis.RedisError:
                pass
            finally:
                client.close()
        for port, n in votes.items():
            if n * 2 > len(self.sentinels):
                return port
        return None

    def role(self, port: int) -> str | None:
        client = self.client(port)
        try:
            return client.info("replication").get("role")
        except redis.RedisError:
            return None
        finally:
            client.close()

    def wait_replicas_online(self, master_port: int, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client = self.client(master_port)
        try:
            while time.monotonic() < deadline:
                try:
                    info = client.info("replication")
                    online = sum(
                        1 for k, v in info.items()
                        if k.startswith("slave") and isinstance(v, dict)
                        and v.get("state") == "online"
                    )
                    if online >= n:
                        return
                except redis.RedisError:
                    pass
                time.sleep(0.1)
        finally:
            client.close()
        raise SentinelClusterError(f"fewer than {n} replicas of {master_port} came online")

    def _wait_sentinels_see_replicas(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready = 0
            for port in self.sentinels:
                client = self.client(port)
                try:
                    fields = client.sentinel_master(self.master_name)
                    if (int(fields.get("num-slaves", 0)) >= self.replica_count
                            and int(fields.get("num-other-sentinels", 0))
                            >= self.sentinel_count - 1):
                        ready += 1
                except redis.RedisError:
                    pass
                finally:
                    client.close()
            if ready == len(self.sentinels):
                return
            time.sleep(0.2)
        raise SentinelClusterError("the sentinels did not find every replica and each other")

    # -- faults -------------------------------------------------------------------------------

    def kill_master(self) -> int:
        """SIGKILL the current master (by pid); return its port."""
        port = self.master_by_sentinels() or self.master_port
        self.servers[port].kill()
        return port

    def wait_for_failover(self, old_port: int, timeout_s: float) -> int:
        """Poll until a majority of sentinels names a new master that says it is one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            port = self.master_by_sentinels()
            if port is not None and port != old_port and self.role(port) == "master":
                self.master_port = port
                return port
            time.sleep(0.1)
        raise SentinelClusterError(f"no failover from {old_port} within {timeout_s:g}s")
