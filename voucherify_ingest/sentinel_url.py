"""Celery's Sentinel form of ``REDIS_URL``: ``sentinel://[:password@]host:port[/db];...``.

Parsed here, below both ``settings`` (which validates it) and ``redis_conn`` (which connects).
The password of the URL is the Redis servers' (as kombu reads it); the sentinels' own password
is ``VOUCHERIFY_REDIS_SENTINEL_PASSWORD``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from voucherify_ingest.errors import ConfigError

DEFAULT_SENTINEL_PORT = 26379


def sentinel_hosts(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` of each ``sentinel://`` part; ConfigError naming REDIS_URL."""
    hosts = []
    for index, part in enumerate(filter(None, (p.strip() for p in url.split(";"))), 1):
        try:
            parts = urlsplit(part)
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            parts, port = None, 0
        if parts is None or parts.scheme != "sentinel" or not parts.hostname:
            raise ConfigError(
                "REDIS_URL in Sentinel form must be sentinel://host:port parts separated by "
                f"';' (part {index} is not)"
            )
        hosts.append((parts.hostname, port))
    return hosts


def sentinel_master_options(url: str) -> dict[str, Any]:
    """Password, username and database for the master, read from the first part (as kombu)."""
    parts = urlsplit(url.split(";", 1)[0].strip())
    options: dict[str, Any] = {}
    if parts.password:
        options["password"] = unquote(parts.password)
    if parts.username:
        options["username"] = unquote(parts.username)
    path = parts.path.strip("/")
    if path.isdigit():
        options["db"] = int(path)
    return options
