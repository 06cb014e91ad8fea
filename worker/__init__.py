"""voucherify-ingest, the Celery side: the app, thin tasks, delivery, the HTTP client, the
shared rate limiter, the delivery ledger, the Redis transport and its housekeeping.

``worker.app`` builds the Celery app (``celery -A worker.app worker`` works as well as
``voucherify-ingest worker``). What producers and workers share lives in ``voucherify_ingest``;
this package never imports ``producers``.
"""

from voucherify_ingest import __version__

__all__ = ["__version__"]
