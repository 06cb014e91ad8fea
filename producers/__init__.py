"""Enqueue Voucherify custom events from web apps and batch jobs.

>>> from producers import enqueue_event
>>> enqueue_event({"event": "signed_up", "customer": {"source_id": "user-42"}})
'7c0e...'
"""

from producers.producer import Producer, enqueue_event, enqueue_events, get_producer, set_producer
from voucherify_ingest.errors import (
    BrokerUnavailable,
    IngestError,
    InvalidEvent,
    PayloadTooLarge,
    SpoolFull,
)

__all__ = [
    # the calls a web app needs
    "enqueue_event",
    "enqueue_events",
    # explicit control over settings and connections
    "Producer",
    "get_producer",
    "set_producer",
    # errors
    "IngestError",
    "InvalidEvent",
    "PayloadTooLarge",
    "BrokerUnavailable",
    "SpoolFull",
]
