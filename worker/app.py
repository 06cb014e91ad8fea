"""The Celery app: JSON only, late acks, prefetch 1, no result backend.

Built by :func:`create_app` from a ``Settings``; ``voucherify-ingest worker`` builds it from the
environment. ``celery -A worker.app worker`` also works (the module-level ``app`` is built from
the environment on first access) and gets the same worker: the start-up checks, kombu fixes,
shutdown guard and housekeeping thread are wired into the app (``worker/embedding.py``).
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import parse_qs, urlsplit

from celery import Celery, signals

from voucherify_ingest.lanes import LANES, lane_queue
from voucherify_ingest.logs import configure_logging
from voucherify_ingest.settings import Settings

UNACKED_MUTEX_EXPIRE_S = 5


def keepalive_options() -> dict:
    """TCP keepalive: first probe after 60 s idle, then every 10 s, give up after 3."""
    names = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}
    return {getattr(socket, n): v for n, v in names.items() if hasattr(socket, n)}


def broker_transport_options(settings: Settings) -> dict:
    return {
        # Only one attempt (plus a bounded rate-limit wait) runs while a message is unacked;
        # retries wait acked in our delayed set. Settings.check_visibility_timeout proves it.
        "visibility_timeout": settings.visibility_timeout_s,
        # How often each worker looks for messages whose worker died (SIGKILL, OOM, power).
        "unacked_restore_interval": settings.restore_interval_s,
        "unacked_restore_throttle": 1,
        # kombu's bookkeeping of delivered-but-unacked messages, under our prefix so that two
        # deployments sharing one Redis database never restore each other's messages.
        "unacked_key": f"{settings.key_prefix}:unacked",
        "unacked_index_key": f"{settings.key_prefix}:unacked_index",
        "unacked_mutex_key": f"{settings.key_prefix}:unacked_mutex",
        # The sweep's lock. kombu keeps it 300 s by default, so a worker killed mid-sweep
        # would stop every restore for five minutes. Two overlapping sweeps are safe (each
        # restore is a WATCH transaction that re-reads the message), so hold it briefly.
        "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        # Find a silently dropped connection in ~90 s instead of the kernel's two hours.
        "socket_keepalive_options": keepalive_options(),
        "health_check_interval": 25,
        **sentinel_transport_options(settings),
        # Lanes: the live list is always read before the bulk one (worker/transport.py).
        "lane_order": tuple(lane_queue(settings.queue, lane) for lane in LANES),
    }


def sentinel_transport_options(settings: Settings) -> dict:
    """kombu's Sentinel options: the master's name, and the sentinels' own password."""
    if not settings.uses_sentinel:
        return {}
    options: dict = {"master_name": settings.redis_sentinel_master}
    sentinel_kwargs = {"socket_timeout": 5, "socket_connect_timeout": 5}
    if settings.redis_sentinel_password:
        sentinel_kwargs["password"] = settings.redis_sentinel_password
    options["sentinel_kwargs"] = sentinel_kwargs
    return options


def _broker_ssl(settings: Settings) -> dict | None:
    """``rediss://`` without ``ssl_cert_reqs`` in the URL: verify certificates (safe default)."""
    parts = urlsplit(settings.redis_url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def create_app(settings: Settings) -> Celery:
    app = Celery("voucherify_ingest", set_as_current=False)
    app.conf.update(
        broker_url=settings.redis_url,
        # kombu's Redis transport with an atomic take (a SIGKILL loses no message) and
        # unreadable items wrapped instead of crashing the worker: worker/transport.py.
        broker_transport=(
            "worker.transport:SentinelTransport"
            if settings.uses_sentinel
            else "worker.transport:Transport"
        ),
        # Celery's consumer, with poison messages dead-lettered (reason invalid), not dropped.
        worker_consumer="worker.poison:Consumer",
        broker_transport_options=broker_transport_options(settings),
        broker_use_ssl=_broker_ssl(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_pool_limit=max(10, settings.worker_concurrency + 2),
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_default_queue=settings.queue,
        task_create_missing_queues=True,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    app.voucherify_settings = settings

    from worker.embedding import wire
    from worker.tasks import register_tasks

    register_tasks(app)
    wire(app, settings)
    return app


@signals.setup_logging.connect(weak=False)
def _celery_logging(**_kwargs):
    """Keep Celery from configuring logging: ours is set up by the entry point."""
    return None


class _LazyApp:
    def __init__(self):
        self._app: Celery | None = None

    def __getattr__(self, name):
        if self._app is None:
            settings = Settings.from_env()
            configure_logging(settings)
            self._app = create_app(settings)
        return getattr(self._app, name)


app = _LazyApp()
