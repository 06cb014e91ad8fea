"""How a worker stops: warm on the first SIGTERM, at once on the second or after a bound.

First SIGTERM (``systemctl stop``, ``docker stop``): Celery's warm shutdown. The worker takes no
new message, lets the deliveries in flight finish (each is bounded by the connect and read
timeouts and the rate-limit wait), and hands back what it had reserved but not started (kombu
restores it to the queue when the channel closes). It then exits 0.

Celery ignores further SIGTERMs during a warm shutdown and its cold shutdown waits for the
threads pool anyway, so a stuck delivery (or a Redis that vanished mid-shutdown) could hold the
process until the service manager's SIGKILL. Here a second SIGTERM, or the stop bound
(:func:`stop_timeout_s`) running out, ends the process at once with exit code 1. Whatever it
still held unacknowledged stays in Redis and is handed out again after the visibility timeout;
the delivery ledger keeps a second worker off an event whose first POST may still be running.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import structlog
from celery import platforms, signals
from celery.worker import state as worker_state

from voucherify_ingest.settings import Settings

#: Room after the longest attempt for writing its outcome (retried with backoff) and acking.
OUTCOME_SLACK_S = 10.0
EXIT_COLD = 1


def stop_timeout_s(settings: Settings) -> float:
    """How long a warm shutdown may take before the worker ends itself."""
    return settings.max_attempt_duration_s + OUTCOME_SLACK_S


class ShutdownGuard:
    """Installs the second-signal and stop-bound behaviour on a worker process."""

    def __init__(self, settings: Settings, *, exit_fn=os._exit):
        self.timeout_s = stop_timeout_s(settings)
        self._exit = exit_fn
        self._started: float | None = None
        self._lock = threading.Lock()
        self.log = structlog.get_logger("voucherify_ingest.shutdown")

    def install(self) -> ShutdownGuard:
        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)
        return self

    def _on_shutting_down(self, sig=None, how=None, **_kwargs) -> None:
        """Runs inside Celery's signal handler, in the main thread."""
        with self._lock:
            if self._started is not None:
                return
            self._started = time.monotonic()
        self.log.info(
            "warm_shutdown", signal=sig, how=how, in_flight=len(worker_state.active_requests),
            stop_timeout_s=round(self.timeout_s, 1),
            note="finishing deliveries in flight; send SIGTERM again to stop at once",
        )
        platforms.signals["SIGTERM"] = self._on_second_signal
        timer = threading.Timer(self.timeout_s, self.exit_now, args=("stop_timeout",))
        timer.daemon = True
        timer.name = "voucherify-stop-timeout"
        timer.start()

    def _on_second_signal(self, signum, _frame) -> None:
        self.exit_now(f"second_{signal.Signals(signum).name}")

    def exit_now(self, why: str) -> None:
        elapsed = time.monotonic() - (self._started or time.monotonic())
        self.log.warning(
            "cold_shutdown", why=why, after_s=round(elapsed, 1),
            in_flight=len(worker_state.active_requests),
            note="messages still unacknowledged come back after the visibility timeout",
        )
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: S110 - exiting anyway; never block the exit
                pass
        self._exit(EXIT_COLD)
