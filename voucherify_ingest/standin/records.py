"""What the stand-in remembers of a request (``Received``) and what it decided (``_Verdict``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Received:
    """One request received on ``/v1/events``; ``status`` 0 means the connection was dropped."""

    at: float
    mono: float
    event_id: str | None
    body: Any
    headers: dict[str, str]
    status: int
    schema_valid: bool
    schema_errors: list[str] = field(default_factory=list)
    schema_checked: bool = True
    outcome: str = "ok"


@dataclass(slots=True)
class _Verdict:
    """What ``_decide`` settled: an answer (``status`` set), a drop, or the default path."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay_s: float = 0.0
    outcome: str = "ok"
    drop: bool = False
    html: bool = False
    garbage: str | None = None
