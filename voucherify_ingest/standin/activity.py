"""The stand-in's List Customer Activity (``GET /v1/customers/{id}/activity``).

Every event the stand-in records (answers 200, or would answer 200 after a stall) becomes a
``customer.custom_event`` activity of its customer, in the official shape
(``CustomersActivityListResponseBody``: ``data[].data.data.event``, see
``docs/reliability.md``), visible after an optional lag (the API's own processing). The
customer is known by its ``source_id`` and its ``cust_...`` id from the moment the event is
received; an unknown customer answers 404 as the API does.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any
from urllib.parse import parse_qs, unquote

from voucherify_ingest.timefmt import iso_utc, parse_iso

ACTIVITY_PATH_PREFIX = "/v1/customers/"
ACTIVITY_PATH_SUFFIX = "/activity"
ACTIVITY_TYPE = "customer.custom_event"


def activity_customer(path: str) -> str | None:
    """The customer ref of an activity path, or None when ``path`` is not one."""
    if path.startswith(ACTIVITY_PATH_PREFIX) and path.endswith(ACTIVITY_PATH_SUFFIX):
        ref = path[len(ACTIVITY_PATH_PREFIX):-len(ACTIVITY_PATH_SUFFIX)]
        return unquote(ref) if ref and "/" not in ref else None
    return None


class ActivityLog:
    """Recorded custom events by customer; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._by_customer: dict[str, list[dict[str, Any]]] = {}
        self.lookups = 0
        self.recorded = 0

    def record(self, request: dict, answer: dict, at: float, lag_s: float) -> None:
        """Remember ``request`` (a 200's body) and the stand-in's ``answer`` to it."""
        customer = answer.get("customer") or {}
        n = next(self._ids)
        stamp = iso_utc(at)
        metadata = request.get("metadata") if isinstance(request.get("metadata"), dict) else {}
        activity = {
            "id": f"evcus_{n:018x}",
            "type": ACTIVITY_TYPE,
            "data": {
                "data": {
                    "event": {
                        "id": f"event_{n:018x}", "object": "event", "type": request.get("event"),
                        "customer": {"id": customer.get("id"), "object": "customer"},
                        "referral": None, "loyalty": None, "metadata": metadata,
                        "created_at": stamp,
                    },
                    "event_schema": {"id": "ms_standin", "name": request.get("event")},
                    "customer": customer, "referral": None, "loyalty": None,
                },
                "event_source": {"channel": "API"},
            },
            "created_at": stamp,
            "group_id": f"v-{n:018x}",
            "_visible_at": time.monotonic() + lag_s,
            "_at": at,
        }
        with self._lock:
            self.recorded += 1
            for ref in {customer.get("id"), customer.get("source_id")} - {None}:
                self._by_customer.setdefault(str(ref), []).append(activity)

    def count(self) -> int:
        with self._lock:
            return self.recorded

    def page(self, ref: str, query: str) -> tuple[int, dict[str, Any]]:
        """(status, body) of one List Customer Activity call."""
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        with self._lock:
            self.lookups += 1
            items = list(self._by_customer.get(ref, ()))
            known = ref in self._by_customer
        if not known:
            return 404, {
                "code": 404, "key": "not_found", "message": "Resource not found",
                "details": f"Cannot find customer with id {ref}", "resource_id": ref,
                "resource_type": "customer",
            }
        try:
            limit = int(params.get("limit", 10))
        except ValueError:
            limit = -1
        if not 1 <= limit <= 100:
            return 400, {"code": 400, "key": "invalid_query_params",
                         "message": "limit must be between 1 and 100"}
        now = time.monotonic()
        start, end = parse_iso(params.get("start_date")), parse_iso(params.get("end_date"))
        kind = params.get("type")
        chosen = [
            a for a in items
            if a["_visible_at"] <= now
            and (kind is None or a["type"] == kind)
            and (start is None or a["_at"] >= start)
            and (end is None or a["_at"] <= end)
        ]
        chosen.sort(key=lambda a: a["_at"], reverse=params.get("order") != "created_at")
        after = params.get("starting_after_id")
        if after:
            ids = [a["id"] for a in chosen]
            chosen = chosen[ids.index(after) + 1:] if after in ids else []
        data = [{k: v for k, v in a.items() if not k.startswith("_")} for a in chosen[:limit]]
        body = {"object": "list", "data_ref": "data", "data": data,
                "has_more": len(chosen) > limit}
        if body["has_more"]:
            body["more_starting_after"] = data[-1]["id"]
        return 200, body
