"""voucherify-ingest: the kernel that producers and workers share.

What lives here is what both sides of the queue must agree on: the event schema and its
validation (``events``), settings, the message format (``messages``), the Redis key layout
(``keys``), the error tree (``errors``), logging, the dead-letter store (``deadletters``) and the
flow counters (``stats``, ``flow``). The doors into the queue are in ``producers``; the Celery
side is in ``worker``; the command line (``voucherify_ingest.cli``) and the local API double
(``voucherify_ingest.standin``) sit above all three. Kernel modules import neither ``producers``
nor ``worker``.

The names below are loaded on first use, so ``voucherify-ingest --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Settings": "voucherify_ingest.settings",
    "validate_event": "voucherify_ingest.events",
    "IngestError": "voucherify_ingest.errors",
    "ConfigError": "voucherify_ingest.errors",
    "InvalidEvent": "voucherify_ingest.errors",
    "PayloadTooLarge": "voucherify_ingest.errors",
    "BrokerUnavailable": "voucherify_ingest.errors",
    "SpoolFull": "voucherify_ingest.errors",
    "DeliveryError": "voucherify_ingest.errors",
    "RetryableDelivery": "voucherify_ingest.errors",
    "RateLimited": "voucherify_ingest.errors",
    "PermanentDelivery": "voucherify_ingest.errors",
    "AuthRejected": "voucherify_ingest.errors",
    "QuotaExhausted": "voucherify_ingest.errors",
    "DeadLetterQueue": "voucherify_ingest.deadletters",
    "DeadLetterFilter": "voucherify_ingest.deadletters",
    "Page": "voucherify_ingest.deadletters",
    "ReplayResult": "voucherify_ingest.deadletters",
    "Retention": "voucherify_ingest.deadletters",
    "REASONS": "voucherify_ingest.deadletters",
    "export_record": "voucherify_ingest.deadletters",
    "make_entry": "voucherify_ingest.deadletters",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'voucherify_ingest' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
