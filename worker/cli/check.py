"""``voucherify-ingest check``: a health probe. Exit 0 with ``ok: ...`` or 1 with the reason."""

from __future__ import annotations

import sys

import click
import redis
import requests

from ..errors import ConfigError
from ..redis_conn import make_redis
from .common import EXIT_FAILURE, EXIT_OK, load_settings


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


def run_checks(settings, *, skip_api: bool) -> tuple[bool, str, list[str]]:
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
        reason = f"Redis at {settings.safe_redis_url} did not answer ({type(exc).__name__})"
        return False, reason, []
    finally:
        client.close()
    warnings = redis_durability_warnings(info) if info else []
    if not skip_api:
        try:
            with requests.Session() as session:
                session.head(settings.api_base, timeout=(settings.connect_timeout_s, 5))
        except requests.RequestException as exc:
            return False, f"cannot reach {settings.api_base} ({type(exc).__name__})", warnings
    reached = "" if skip_api else f", {settings.api_base} reachable"
    return True, f"settings valid, Redis at {settings.safe_redis_url} answers{reached}", warnings


@click.command("check")
@click.option("--skip-api", is_flag=True, help="Do not contact the API host (for frequent probes).")
def check_command(skip_api):
    """Check settings, Redis and the API host; exit 0 if all is well, else 1 with the reason.

    Warns (without failing) when Redis could evict or lose queued events.

    \b
    Examples:
      voucherify-ingest check
      voucherify-ingest check --skip-api      # liveness probe without calls out
    """
    try:
        settings = load_settings()
    except ConfigError as exc:
        click.echo(f"fail: {exc}")
        sys.exit(EXIT_FAILURE)
    ok, reason, warnings = run_checks(settings, skip_api=skip_api)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{'ok' if ok else 'fail'}: {reason}")
    sys.exit(EXIT_OK if ok else EXIT_FAILURE)


def register(group: click.Group) -> None:
    group.add_command(check_command)
