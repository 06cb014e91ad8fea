"""``voucherify-ingest check``: a health probe. Exit 0 with ``ok: ...`` or 1 with the reason.

It checks what the host's role needs (``--role``, else chosen from the environment, see
:func:`choose_role`): a worker needs API credentials, a valid visibility timeout, Redis and the
API host; a producer (a web app calling ``enqueue_event``) needs Redis; a ``serve`` host needs
Redis and its ingest credentials, never the Voucherify token.

As a container or orchestrator probe use ``check --skip-api`` (no traffic to the API every few
seconds; the API being slow is what the queue is for, not a reason to restart a worker) and,
in a worker's container, ``--worker``: a worker on this host must have sent a heartbeat within
15 s (its housekeeping thread writes one every 5 s to ``{p}:workers``).
"""

from __future__ import annotations

import os
import socket
import sys
import time

import click
import redis
import requests

from voucherify_ingest.cli.common import EXIT_FAILURE, EXIT_OK, load_settings
from voucherify_ingest.errors import ConfigError
from voucherify_ingest.flow import ALIVE_WITHIN_S
from voucherify_ingest.redis_conn import describe_redis_failure, make_redis
from voucherify_ingest.settings import ROLES
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


def choose_role(role: str | None, environ, *, worker_probe: bool) -> tuple[str, str]:
    """The role to check and why: ``--role`` wins; ``--worker`` or Voucherify credentials in the
    environment mean a worker; ``VOUCHERIFY_INGEST_CREDENTIALS`` a serve host; else a producer."""
    if role:
        return role, "--role"
    if worker_probe:
        return "worker", "--worker"
    if environ.get("VOUCHERIFY_APP_ID") or environ.get("VOUCHERIFY_APP_TOKEN"):
        return "worker", "VOUCHERIFY_APP_ID/TOKEN set"
    if environ.get("VOUCHERIFY_INGEST_CREDENTIALS"):
        return "serve", "VOUCHERIFY_INGEST_CREDENTIALS set"
    return "producer", "no VOUCHERIFY_APP_ID/TOKEN nor VOUCHERIFY_INGEST_CREDENTIALS set"


def role_config_checks(settings, role: str) -> list[str]:
    """What the role needs of its settings, beyond parsing: ConfigError, or its warnings."""
    warnings: list[str] = []
    if role == "worker":
        settings.require_credentials()
        settings.check_visibility_timeout()
        if settings.api_in_clear:
            warnings.append(api_in_clear_warning(settings))
    elif role == "serve":
        from producers.serve.auth import Authenticator, short_token_warnings

        Authenticator(settings.ingest_credentials)
        warnings += short_token_warnings(settings.ingest_credentials)
    return warnings


def api_in_clear_warning(settings) -> str:
    return (
        f"VOUCHERIFY_API_URL is {settings.api_base} (http://): the API token travels in clear; "
        "use https://"
    )


def run_checks(
    settings, *, skip_api: bool, worker: bool = False, role: str = "worker"
) -> tuple[bool, str, list[str]]:
    try:
        config_warnings = role_config_checks(settings, role)
    except ConfigError as exc:
        return False, str(exc), []
    if role != "worker":
        skip_api = True  # only a worker talks to the API
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
        reason = describe_redis_failure(settings.redis_url, exc)
        return False, reason, []
    try:
        node = local_worker_alive(client, settings) if worker else None
    except redis.RedisError as exc:
        reason = describe_redis_failure(settings.redis_url, exc)
        return False, reason, []
    finally:
        client.close()
    if worker and node is None:
        return False, (
            f"no worker on this host ({socket.gethostname()}) sent a heartbeat in the last "
            f"{ALIVE_WITHIN_S:g}s"
        ), []
    warnings = config_warnings + (redis_durability_warnings(info) if info else [])
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
@click.option("--role", type=click.Choice(ROLES), default=None,
              help="What this host runs: worker (credentials, Redis, API), producer (Redis: an "
                   "app calling enqueue_event) or serve (Redis, ingest credentials). Default: "
                   "worker when VOUCHERIFY_APP_ID/TOKEN are set or --worker is given, serve when "
                   "VOUCHERIFY_INGEST_CREDENTIALS is, else producer.")
@click.option("--skip-api", is_flag=True, help="Do not contact the API host (for frequent probes).")
@click.option("--worker", is_flag=True,
              help="Also require a live worker on this host (a worker container's probe).")
def check_command(role, skip_api, worker):
    """Check settings, Redis and (for a worker) the API host; exit 0 if all is well, else 1
    with the reason.

    Checks only what the role needs, and says which role it checked and why. Warns (without
    failing) when Redis could evict or lose queued events, when a worker would send its token
    over http://, or when an ingest token is short.

    \b
    Examples:
      voucherify-ingest check
      voucherify-ingest check --skip-api      # liveness probe without calls out
      voucherify-ingest check --skip-api --worker   # ... and this host's worker beats
      voucherify-ingest check --role serve    # a serve host's probe (no Voucherify token)
      voucherify-ingest check --role producer # can this app host reach the queue?
    """
    role, why = choose_role(role, os.environ, worker_probe=worker)
    if worker and role != "worker":
        raise click.UsageError("--worker probes a worker: it needs --role worker")
    try:
        settings = load_settings(role)
    except ConfigError as exc:
        click.echo(f"fail: {exc} (role {role}: {why})")
        sys.exit(EXIT_FAILURE)
    ok, reason, warnings = run_checks(settings, skip_api=skip_api, worker=worker, role=role)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{'ok' if ok else 'fail'}: {reason} (role {role}: {why})")
    sys.exit(EXIT_OK if ok else EXIT_FAILURE)
