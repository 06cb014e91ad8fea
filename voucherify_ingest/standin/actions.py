"""One-shot actions for ``StandIn.plan()``: plain dicts, so they travel over HTTP as JSON."""

from __future__ import annotations

from typing import Any

GARBAGE_KINDS = ("truncated_json", "empty_200", "huge", "html_200")

def respond(status: int, headers: dict[str, str] | None = None, body: Any = None) -> dict:
    """Answer ``status``; error statuses get a Voucherify error body unless ``body`` is given."""
    return {"respond": status, "headers": headers or {}, "body": body}


def stall(seconds: float) -> dict:
    """Sleep ``seconds``, then answer as usual (200 for a good event): beats a read timeout."""
    return {"stall": seconds}


def drop() -> dict:
    """Read the request, then close the connection without answering."""
    return {"drop": True}


def html(status: int = 502) -> dict:
    """Answer a gateway's HTML page instead of JSON."""
    return {"html": status}


def garbage(kind: str) -> dict:
    """A broken 200: ``truncated_json``, ``empty_200``, ``huge`` (~5 MB) or ``html_200``."""
    return {"garbage": kind}


def _check_action(action: Any) -> dict:
    if not isinstance(action, dict):
        raise ValueError(f"a plan action must be a dict, got {action!r}")
    kinds = [k for k in ("respond", "stall", "drop", "html", "garbage") if k in action]
    if len(kinds) != 1:
        raise ValueError(f"a plan action needs exactly one kind, got {action!r}")
    kind, value = kinds[0], action[kinds[0]]
    if kind in ("respond", "html") and not (isinstance(value, int) and 100 <= value <= 599):
        raise ValueError(f"{kind} needs an HTTP status, got {value!r}")
    if kind == "stall" and not (isinstance(value, (int, float)) and value >= 0):
        raise ValueError(f"stall needs seconds >= 0, got {value!r}")
    if kind == "garbage" and value not in GARBAGE_KINDS:
        raise ValueError(f"garbage kind must be one of {GARBAGE_KINDS}, got {value!r}")
    return {"headers": {}, "body": None, **action} if kind == "respond" else dict(action)
