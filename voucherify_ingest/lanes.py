"""Lanes: ``live`` events (a customer just did something) go before ``bulk`` ones (a backfill).

Each lane is its own Redis list, so a 100,000-event backfill never stands in front of a
``signed_up`` event. The worker takes from the lanes in :data:`LANES` order, and the shared rate
limiter (``worker/ratelimit.py``) gives a waiting live event the next free slot ahead of any
bulk event not yet sent. The ``live`` list keeps the historical queue name
(``VOUCHERIFY_QUEUE``), so messages queued before lanes existed are live; the others are named
``{queue}.{lane}``.

An envelope carries its lane (``"lane"``; absent means live), so a retry, a rate-limit
deferral, a requeued batch and a replay go back to the lane they came from.
"""

from __future__ import annotations

LIVE = "live"
BULK = "bulk"
LANES: tuple[str, ...] = (LIVE, BULK)  # priority order: first is served first


class UnknownLane(ValueError):
    """A lane name that is not one of :data:`LANES`."""

    def __init__(self, name: object):
        self.name = name
        super().__init__(f"unknown lane {name!r}: lanes are {', '.join(LANES)}")


def check_lane(name: object) -> str:
    """``name`` when it is a lane (case and spaces forgiven), else :class:`UnknownLane`."""
    text = name.strip().lower() if isinstance(name, str) else name
    if text not in LANES:
        raise UnknownLane(name)
    return text  # type: ignore[return-value]


def lane_queue(queue: str, lane: str) -> str:
    """The Redis list (and kombu queue) of ``lane``: ``queue`` itself for live."""
    return queue if lane == LIVE else f"{queue}.{lane}"


def lane_of(envelope: object) -> str:
    """The lane an envelope (or a batch's first envelope) belongs to; live when unknown."""
    if isinstance(envelope, list):
        envelope = envelope[0] if envelope else None
    lane = envelope.get("lane") if isinstance(envelope, dict) else None
    return lane if lane in LANES else LIVE
