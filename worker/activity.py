"""Asking Voucherify whether it recorded one custom event: List Customer Activity.

``GET /v1/customers/{id or source_id}/activity?type=customer.custom_event&start_date=..&
end_date=..&limit=100``, then ``starting_after_id=<more_starting_after>`` while ``has_more``
(confirmed by the official spec, see ``docs/reliability.md``). The event is found when an
activity's ``data.data.event.metadata[<marker>]`` is the event id (the spec's nesting), with
``data.event`` (the webhook shape) as a fallback because no captured answer confirms it.

A 404 for the event's customer is an answer: nothing of that customer is recorded (yet).
Anything else that is not a 200 list is a failed lookup, retried by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from voucherify_ingest.errors import DeliveryError
from voucherify_ingest.timefmt import iso_utc

ACTIVITY_TYPE = "customer.custom_event"
PAGE_LIMIT = 100
MAX_PAGES = 20  # 2,000 custom events of one customer in the window: give up, hold instead

FOUND, ABSENT, FAILED = "found", "absent", "failed"


@dataclass(frozen=True)
class LookupResult:
    verdict: str  # found | absent | failed
    pages: int  # API calls made (each one spends a rate-limit slot)
    detail: str = ""


def customer_ref(payload: dict[str, Any]) -> str | None:
    """The customer the event was sent for: its ``id`` when given, else its ``source_id``."""
    customer = payload.get("customer")
    if not isinstance(customer, dict):
        return None
    ref = customer.get("id") or customer.get("source_id")
    return str(ref) if ref else None


def _event_of(activity: Any) -> dict[str, Any] | None:
    if not isinstance(activity, dict):
        return None
    data = activity.get("data")
    if not isinstance(data, dict):
        return None
    inner = data.get("data")
    for holder in (inner, data):
        if isinstance(holder, dict) and isinstance(holder.get("event"), dict):
            return holder["event"]
    return None


def matches(activity: Any, marker_key: str, event_id: str, event_name: str) -> bool:
    event = _event_of(activity)
    if event is None:
        return False
    metadata = event.get("metadata")
    if not isinstance(metadata, dict) or metadata.get(marker_key) != event_id:
        return False
    return event.get("type") in (None, event_name)


class ActivityLookup:
    """Looks one event up; ``take_slot()`` is called before every page (the rate budget)."""

    def __init__(self, http, marker_key: str, window_s: float):
        self.http = http
        self.marker_key = marker_key
        self.window_s = window_s

    def find(self, payload: dict, event_id: str, sent_at: float, now: float,
             take_slot=lambda: None) -> LookupResult:
        ref = customer_ref(payload)
        if ref is None:
            return LookupResult(FAILED, 0, "the event names no customer")
        path = f"/v1/customers/{quote(ref, safe='')}/activity"
        params = {
            "type": ACTIVITY_TYPE,
            "start_date": iso_utc(sent_at - self.window_s),
            "end_date": iso_utc(now + self.window_s),
            "limit": PAGE_LIMIT,
        }
        pages = 0
        while pages < MAX_PAGES:
            take_slot()
            pages += 1
            try:
                status, body, _headers = self.http.get_json(path, params)
            except DeliveryError as exc:
                return LookupResult(FAILED, pages, str(exc))
            if status == 404:
                return LookupResult(ABSENT, pages, "customer not found")
            if status != 200 or not isinstance(body, dict) or not isinstance(
                body.get("data"), list
            ):
                return LookupResult(FAILED, pages, f"HTTP {status}")
            if any(matches(a, self.marker_key, event_id, payload.get("event"))
                   for a in body["data"]):
                return LookupResult(FOUND, pages)
            if not body.get("has_more"):
                return LookupResult(ABSENT, pages)
            cursor = body.get("more_starting_after") or (
                body["data"][-1].get("id") if body["data"] and isinstance(
                    body["data"][-1], dict) else None)
            if not cursor:
                return LookupResult(FAILED, pages, "has_more without a cursor")
            params = {**params, "starting_after_id": cursor}
        return LookupResult(FAILED, pages, f"more than {MAX_PAGES} pages")
