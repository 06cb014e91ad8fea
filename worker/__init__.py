"""voucherify-ingest worker side: settings, schemas, the Celery app, delivery and dead letters."""

__version__ = "0.1.0"
