"""In-doubt deliveries: what they are, which policy settles them, and what is counted.

A send is *in doubt* when the request may have reached Voucherify and no outcome was recorded:
the worker died after writing it, the read timed out, or the connection broke after the body
went out. Voucherify has no idempotency key, so resending such an event blindly may record it
twice. A connect error or a refused connection is not in doubt (nothing was sent).

Policies (``VOUCHERIFY_IN_DOUBT``, per event name ``VOUCHERIFY_IN_DOUBT_EVENTS``):

- ``hold``: dead-letter with reason ``in_doubt`` and the evidence; an operator replays it.
- ``verify``: ask List Customer Activity whether the event was recorded (needs the marker
  ``VOUCHERIFY_EVENT_ID_METADATA_KEY``); found: delivered; absent after the grace: resend.
- ``resend``: at-least-once, as before; for events whose duplicate is harmless.

The default is ``verify`` when a marker key is configured (the lookup can tell one event from
another), else ``hold`` (without a marker nothing can be verified, and holding never records
an event twice nor loses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voucherify_ingest.errors import ConfigError

HOLD, VERIFY, RESEND = "hold", "verify", "resend"
POLICIES = (HOLD, VERIFY, RESEND)

# Counter names (``{p}:stats:counters``): one per outcome of a settled in-doubt send.
HELD = "in_doubt:held"
VERIFIED_DELIVERED = "in_doubt:verified_delivered"
VERIFIED_ABSENT = "in_doubt:verified_absent_resent"
LOOKUP_FAILED = "in_doubt:lookup_failed"
RESENT = "in_doubt:resent"
LOOKUPS = "in_doubt:lookups"
OUTCOME_COUNTERS = (HELD, VERIFIED_DELIVERED, VERIFIED_ABSENT, LOOKUP_FAILED, RESENT, LOOKUPS)

OUTCOME_LABELS = {
    HELD: "held",
    VERIFIED_DELIVERED: "verified delivered",
    VERIFIED_ABSENT: "verified absent, resent",
    LOOKUP_FAILED: "lookup failed, held",
    RESENT: "resent (policy resend)",
    LOOKUPS: "lookups",
}


def outcome_counts(counters: dict[str, int]) -> dict[str, int]:
    """The in-doubt counters of a ``{p}:stats:counters`` hash, by short name (``held``...)."""
    return {name.split(":", 1)[1]: int(counters.get(name, 0)) for name in OUTCOME_COUNTERS}


# What happened to a send whose outcome is unknown (the evidence's ``what``).
WORKER_DIED = "no outcome recorded (the sending worker died or lost Redis)"


def parse_overrides(raw: str) -> dict[str, str]:
    """``order_paid=hold,page_view=resend`` -> {event name: policy}; ConfigError if malformed."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, policy = item.rpartition("=")
        name, policy = name.strip(), policy.strip().lower()
        if not sep or not name or policy not in POLICIES:
            raise ConfigError(
                "VOUCHERIFY_IN_DOUBT_EVENTS must be a comma-separated list of "
                f"event_name=hold|verify|resend, got {item!r}"
            )
        out[name] = policy
    return out


def default_policy(settings: Any) -> str:
    policy = (settings.in_doubt or "").strip().lower()
    if policy:
        return policy
    return VERIFY if settings.event_id_metadata_key else HOLD


def check_in_doubt_settings(settings: Any) -> None:
    """Raise ConfigError naming the variable for a bad policy or a verify without a marker."""
    policy = (settings.in_doubt or "").strip().lower()
    if policy and policy not in POLICIES:
        raise ConfigError(f"VOUCHERIFY_IN_DOUBT must be hold, verify or resend, got {policy!r}")
    overrides = parse_overrides(settings.in_doubt_events)
    wants_verify = default_policy(settings) == VERIFY or VERIFY in overrides.values()
    if wants_verify and not settings.event_id_metadata_key:
        raise ConfigError(
            "VOUCHERIFY_IN_DOUBT=verify needs VOUCHERIFY_EVENT_ID_METADATA_KEY (e.g. "
            "ingest_event_id): without the event id in the event's metadata a lookup cannot "
            "tell this event from another of the same name"
        )
    key = settings.event_id_metadata_key
    if key and (len(key) > 100 or not key.replace("_", "").replace("-", "").isalnum()):
        raise ConfigError(
            "VOUCHERIFY_EVENT_ID_METADATA_KEY must be letters, digits, _ or - (at most 100), "
            f"got {key!r}"
        )


@dataclass(frozen=True)
class Policies:
    """The policy of each event name, resolved once per process."""

    default: str
    overrides: dict[str, str]

    @classmethod
    def from_settings(cls, settings: Any) -> Policies:
        return cls(default_policy(settings), parse_overrides(settings.in_doubt_events))

    def for_event(self, event_name: str) -> str:
        return self.overrides.get(event_name, self.default)


@dataclass(frozen=True)
class SendRecord:
    """The ledger's note that a request went out: by whom, when, and what became of it."""

    by: str
    sent_at: float  # epoch seconds
    what: str = ""

    def encode(self) -> str:
        return f"{self.by}|{self.sent_at:.3f}|{self.what}"

    @classmethod
    def decode(cls, raw: bytes | str | None) -> SendRecord | None:
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        by, _, rest = text.partition("|")
        at, _, what = rest.partition("|")
        try:
            sent_at = float(at)
        except ValueError:
            sent_at = 0.0
        return cls(by, sent_at, what or WORKER_DIED)

    def evidence(self) -> dict[str, Any]:
        from voucherify_ingest.timefmt import iso_utc

        return {"sent_at": iso_utc(self.sent_at), "sent_by": self.by, "what": self.what}
