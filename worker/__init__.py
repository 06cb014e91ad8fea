"""voucherify-ingest, worker side: settings, schemas, the Celery app, delivery, dead letters.

The names a script needs are exported here; the Celery app is built by ``worker.app``.
"""

__version__ = "0.1.0"

from .dlq import (  # noqa: E402 - __version__ first: worker.client reads it at import
    REASONS,
    DeadLetterFilter,
    DeadLetterQueue,
    Page,
    ReplayResult,
    Retention,
    export_record,
    make_entry,
)
from .errors import (  # noqa: E402
    AuthRejected,
    BrokerUnavailable,
    ConfigError,
    DeliveryError,
    IngestError,
    InvalidEvent,
    PayloadTooLarge,
    PermanentDelivery,
    QuotaExhausted,
    RateLimited,
    RetryableDelivery,
    SpoolFull,
)
from .schemas import validate_event  # noqa: E402
from .settings import Settings  # noqa: E402

__all__ = [
    "__version__",
    # configuration and validation
    "Settings",
    "validate_event",
    # dead letters, for operator scripts
    "DeadLetterQueue",
    "DeadLetterFilter",
    "Page",
    "ReplayResult",
    "Retention",
    "REASONS",
    "export_record",
    "make_entry",
    # errors
    "IngestError",
    "ConfigError",
    "InvalidEvent",
    "PayloadTooLarge",
    "BrokerUnavailable",
    "SpoolFull",
    "DeliveryError",
    "RetryableDelivery",
    "RateLimited",
    "PermanentDelivery",
    "AuthRejected",
    "QuotaExhausted",
]
