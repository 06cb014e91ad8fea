"""Test helpers that drive real parts: a private redis-server and subprocesses.

- ``tests.support.redis_server``: ``RedisServer`` (private redis-server by pid),
  ``find_redis_server``, ``delete_namespace_keys``.
- ``tests.support.procs``: ``ManagedProcess`` (process group, captured log),
  with an atexit hook that kills anything left running.
"""

from .procs import ManagedProcess, ProcessOutputError, kill_all, pid_alive
from .redis_server import (
    ExternalRedis,
    RedisServer,
    RedisServerError,
    RedisServerUnavailable,
    TLSUnsupported,
    delete_namespace_keys,
    find_redis_server,
)

__all__ = [
    "ExternalRedis",
    "ManagedProcess",
    "ProcessOutputError",
    "RedisServer",
    "RedisServerError",
    "RedisServerUnavailable",
    "TLSUnsupported",
    "delete_namespace_keys",
    "find_redis_server",
    "kill_all",
    "pid_alive",
]
