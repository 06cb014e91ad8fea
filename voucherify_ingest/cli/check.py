"""``voucherify-ingest check``: a health probe. Exit 0 with ``ok: ...`` or 1 with the reason.

As a container or orchestrator probe use ``check --skip-api`` (no traffic to the API every few
seconds; the API being slow is what the queue is for, not a reason to restart a worker) and,
in a worker's container, ``--worker``: a worker on this host must have sent a heartbeat within
15 s (its housekeeping thread writes one every 5 s to ``{p}:workers``).
"""

from __future__ import annotations

import socket
import sys
import time

import click
import redis
import requests

from voucherify_ingest.cli.common import EXIT_FAILURE, EXIT_OK, load_settings
from voucherify_ingest.errors import ConfigError
from voucherify_ingest.flow import ALIVE_WITHIN_S
from voucherify_ingest.redis_conn import make_redis
from voucherify_ingest.stats import StatsRecorder


def redis_durability_warnings(info: dict) -> list[str]:
    """Why queued events could be lost or evicted by this Redis (empty list: none)."""
    warnings = []
    policy = info.get("maxmemory_policy", "noeviction")
    if policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy}: under memory pressure it would evict queued "
            "events; set maxmemory-policy noeviction"
        )
    aof = str(info.get("aof_enabled", "0")) == "1"
    rdb = bool(info.get("rdb_saves_configured"))
    if not aof:
        warnings.append(
            "Redis has AOF persistence off (appendonly no): a Redis restart can lose queued "
            "events; set appendonly yes, appendfsync everysec"
            + ("" if rdb else " (and no RDB snapshots are configured)")
        )
    return warnings


def local_worker_alive(client, settings, host: str | None = None) -> str | None:
    """Node name of a worker on ``host`` (default: this one) with a fresh heartbeat, or None.

    Default node names are ``voucherify-PID@HOST``; a container's host name is its own."""
    host = host or socket.gethostname()
    beats = client.zrangebyscore(
        StatsRecorder(settings.key_prefix).workers_key, time.time() - ALIVE_WITHIN_S, "+inf"
    )
    for node in beats:
        name = node.decode() if isinstance(node, bytes) else str(node)
        if name.rsplit("@", 1)[-1] == host:
            return name
    return None


def run_checks(
    settings, *, skip_api: bool, worker: bool = False
) -> tuple[bool, str, list[str]]:
    try:
        settings.require_credentials()
        settings.check_visibility_timeout()
    except ConfigError as exc:
        return False, str(exc), []
    client = make_redis(settings, timeout_s=3.0)
    try:
        client.ping()
        info = client.info("persistence")
        info.update(client.info("memory"))
        info["rdb_saves_configured"] = bool(client.config_get("save").get("save"))
    except redis.ResponseError:
        info = {}  # CONFIG/INFO may be disabled on managed Redis: skip durability hints
    except redis.RedisError as exc:
        client.close()
        reason = f"Redis at {settings.safe_redis_url} did not answer ({type(exc).__name__})"
        return False, reason, []
    try:
        node = local_worker_alive(client, settings) if worker else None
    except redis.RedisError as exc:
        reason = f"Redis at {settings.safe_redis_url} did not answer ({type(exc).__name__})"
        return False, reason, []
    finally:
        client.close()
    if worker and node is None:
        return False, (
            f"no worker on this host ({socket.gethostname()}) sent a heartbeat in the last "
            f"{ALIVE_WITHIN_S:g}s"
        ), []
    warnings = redis_durability_warnings(info) if info else []
    if not skip_api:
        try:
            with requests.Session() as session:
                session.head(settings.api_base, timeout=(settings.connect_timeout_s, 5))
        except requests.RequestException as exc:
            return False, f"cannot reach {settings.api_base} ({type(exc).__name__})", warnings
    reached = "" if skip_api else f", {settings.api_base} reachable"
    alive = f", worker {node} alive" if node else ""
    return True, (
        f"settings valid, Redis at {settings.safe_redis_url} answers{reached}{alive}"
    ), warnings


@click.command("check")
@click.option("--skip-api", is_flag=True, help="Do not contact the API host (for frequent probes).")
@click.option("--worker", is_flag=True,
              help="Also require a live worker on this host (a worker container's probe).")
def check_command(skip_api, worker):
    """Check settings, Redis and the API host; exit 0 if all is well, else 1 with the reason.

    Warns (without failing) when Redis could evict or lose queued events.

    \b
    Examples:
      voucherify-ingest check
      voucherify-ingest check --skip-api      # liveness probe without calls out
      voucherify-ingest check --skip-api --worker   # ... and this host's worker beats
    """
    try:
        settings = load_settings()
    except ConfigError as exc:
        click.echo(f"fail: {exc}")
        sys.exit(EXIT_FAILURE)
    ok, reason, warnings = run_checks(settings, skip_api=skip_api, worker=worker)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{'ok' if ok else 'fail'}: {reason}")
    sys.exit(EXIT_OK if ok else EXIT_FAILURE)
