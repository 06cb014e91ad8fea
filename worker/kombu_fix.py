"""Keep a worker alive, and its deliveries single, when Redis goes away mid-delivery.

Found by ``tests/processes/test_daemon.py`` with kombu 5.7 and Celery 5.7. When the broker
connection
drops while messages are unacknowledged, Celery's consumer calls ``Connection.collect()`` and
then ``Connection.close()`` before reconnecting; the deliveries themselves keep running
(``worker_cancel_long_running_tasks_on_connection_loss`` is off). Two things went wrong:

1. ``collect()`` detaches the transport (``transport.client = None``) but leaves the
   half-closed channel in place. The second close asks that channel to restore its unacked
   messages, ``Channel._connparams`` reads ``transport.client.hostname`` and the worker died
   with "Unrecoverable error: AttributeError: 'NoneType' object has no attribute 'hostname'".
   The late ack of a delivery that ran across the reconnect failed the same way (by then on
   a closed channel, whose ``connection`` is None) and killed the worker too.
2. When Redis was already back for that close, the restore pushed the messages of deliveries
   still running back onto the queue; the same worker took them again, and its ledger claim
   (same process, same owner) let the copy through: the event was POSTed twice.

So, in the worker process only (:func:`apply`, called at ``worker_init``: worker/embedding.py):

- a Redis channel remembers the connection details it was built with and uses them once its
  transport is detached or the channel closed, so the acks of deliveries that ran across the
  reconnect reach Redis when it is back (while it is down they fail with a connection error,
  which kombu logs and Celery survives; such a message comes back after the visibility
  timeout and the ledger skips it);
- a channel closed because the connection was lost (not because the worker is stopping) does
  not restore its unacked messages: their deliveries are still running and ack when done. Any
  that never ack stay in kombu's unacked hash and come back after the visibility timeout, where
  the delivery ledger turns an already-delivered event into a skipped duplicate. A warm
  shutdown still hands back reserved messages at once, as before.
"""

from __future__ import annotations

from types import SimpleNamespace

from celery.worker import state as worker_state
from kombu.transport import redis as kombu_redis

_SAVED = "_voucherify_conninfo"
_MARK = "_voucherify_patched"


def _worker_stopping() -> bool:
    return worker_state.should_stop is not None or worker_state.should_terminate is not None


def apply() -> None:
    """Patch kombu's Redis channel and QoS once (idempotent)."""
    channel_cls, qos_cls = kombu_redis.Channel, kombu_redis.QoS
    if getattr(channel_cls._connparams, _MARK, False):
        return
    original_connparams = channel_cls._connparams
    original_restore_once = qos_cls.restore_unacked_once

    def _connparams(self, asynchronous=False):
        transport = self.connection
        if transport is not None and transport.client is not None:
            self.__dict__[_SAVED] = (transport.client, transport.default_port)
            return original_connparams(self, asynchronous=asynchronous)
        saved = self.__dict__.get(_SAVED)
        if saved is None:
            return original_connparams(self, asynchronous=asynchronous)
        # Detached or closed (Celery reconnects with a new transport): read the details this
        # channel was built with. Only acks of deliveries that ran across the reconnect and a
        # late restore come this way, on a channel nothing else uses any more.
        client, default_port = saved
        self.connection = SimpleNamespace(client=client, default_port=default_port)
        try:
            return original_connparams(self, asynchronous=asynchronous)
        finally:
            self.connection = transport

    def restore_unacked_once(self, stderr=None):
        if not _worker_stopping() and self._delivered:
            # Connection lost, worker not stopping: the deliveries behind these messages are
            # still running and will ack; the visibility timeout covers any that never do.
            self._on_collect.cancel()
            return None
        return original_restore_once(self, stderr)

    setattr(_connparams, _MARK, True)
    channel_cls._connparams = _connparams
    qos_cls.restore_unacked_once = restore_unacked_once
