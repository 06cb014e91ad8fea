"""Our worker machinery, wired into the Celery app itself through Celery's signals.

``voucherify-ingest worker``, ``celery -A worker.app worker`` and a deployment that embeds the app
in its own Celery setup all get the same worker, because the wiring lives here and not in one
entry point:

- ``worker_init``: the start-up checks (credentials, visibility timeout against the longest
  attempt); a failure ends the process with the reason instead of a worker that dead-letters
  everything. Then the kombu fixes (``worker/kombu_fix.py``) and the shutdown guard
  (``worker/shutdown.py``), in the worker process only: producers never load them.
- ``worker_ready``: the housekeeping thread that brings delayed retries back
  (``worker/housekeeping.py``) and the ``worker_ready`` log line.
- ``worker_shutdown``: the housekeeping thread stops.

Each handler acts only for the app it was wired to (``sender.app``), so two apps in one
process do not start each other's threads.
"""

from __future__ import annotations

import structlog
from celery import Celery, signals

from voucherify_ingest.errors import ConfigError
from voucherify_ingest.settings import Settings


def _app_of(sender) -> Celery | None:
    return getattr(sender, "app", None)


def wire(app: Celery, settings: Settings) -> None:
    """Connect the worker signals for ``app`` (once per app)."""
    if getattr(app, "_voucherify_wired", False):
        return
    app._voucherify_wired = True
    log = structlog.get_logger("voucherify_ingest.worker")
    keeper: dict[str, object] = {}

    def on_init(sender=None, **_kwargs):
        if _app_of(sender) is not app:
            return
        try:
            settings.require_credentials()
            settings.check_visibility_timeout()
        except ConfigError as exc:
            log.error("worker_config_error", error=str(exc))
            raise SystemExit(f"voucherify-ingest: {exc}") from None  # Celery swallows Exception
        from worker import kombu_fix
        from worker.shutdown import ShutdownGuard

        kombu_fix.apply()  # survive a Redis restart with deliveries in flight
        ShutdownGuard(settings).install()  # second SIGTERM / stop bound: exit at once

    def on_ready(sender=None, **_kwargs):
        if _app_of(sender) is not app:
            return
        from worker.housekeeping import Housekeeper

        name = getattr(sender, "hostname", None) or "worker"
        keeper["k"] = housekeeper = Housekeeper(settings, name)
        housekeeper.start()
        log.info(
            "worker_ready", node=name, queue=settings.queue, pool=settings.worker_pool,
            concurrency=settings.worker_concurrency, api_url=settings.api_base,
            redis=settings.safe_redis_url, rate_limit=settings.rate_limit or "off",
        )

    def on_shutdown(sender=None, **_kwargs):
        if _app_of(sender) is not app:
            return
        housekeeper = keeper.pop("k", None)
        if housekeeper is not None:
            housekeeper.stop()
        log.info("worker_stopped")

    signals.worker_init.connect(on_init, weak=False)
    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutdown.connect(on_shutdown, weak=False)
