"""What became of one event in a delivery (returned by ``Deliverer.handle``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    kind: str  # delivered | duplicate | retry | deferred | dead_lettered
    event_id: str
    detail: str = ""
