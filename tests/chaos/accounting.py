"""The accounting check every chaos scenario ends with.

Every enqueued event id must end up delivered (a 200 recorded by the stand-in) or in the
dead-letter store; nothing may be missing, and no id may turn up that nobody enqueued.

A duplicate is every 200 the stand-in answered for an event id after its first one, whatever
the cause: from the API's side (Voucherify has no idempotency key) an event recorded twice is
recorded twice, whether a worker resent it blind after a lost answer or for any other reason.
Nothing excuses one. The scenarios also report *in-doubt sends* beside the duplicates, never
subtracted from them: 200s that never reached a living worker's ledger, because

- the stand-in held its 200 past the worker's read timeout (``answer_after_timeout``);
- the worker that sent the request was SIGKILLed between the API's 200 and its ledger write
  (``answer_not_in_ledger``: exact, from the workers' own "delivered" log lines, which come
  after the ledger write; ``answer_during_kill`` is the older timing-window estimate).

An event held as ``in_doubt`` in the dead-letter store may also have a 200 (the API recorded
it; nobody could tell): it is reported as held, and as "held, recorded by the API" when the
stand-in has its 200, not as delivered-and-dead-lettered.

A scenario fails on any duplicate (``MAX_DUPLICATE_RATIO`` is 0) unless it runs the ``resend``
policy, where duplicates are expected and counted: ``check(max_duplicate_ratio=None)``.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from voucherify_ingest.standin import Received

MAX_DUPLICATE_RATIO = 0.0  # never twice (policies hold and verify)
# How long before a SIGKILL a 200 may have been answered and still not be in the ledger: the
# answer's way back plus parsing plus one Redis round trip (observed: up to ~15 ms on a loaded
# 2-core machine). Wider would hide real duplicates; narrower only makes the check stricter.
KILL_WINDOW_BEFORE_S = 0.05


def answer_after_timeout(stall_outcomes: Iterable[str] = ("chaos_stall", "stalled")):
    """This 200 was held past the worker's read timeout: the worker never saw it."""
    outcomes = frozenset(stall_outcomes)
    return lambda record: record.outcome in outcomes


def delivered_log_counts(worker_logs: Iterable[str]) -> collections.Counter:
    """How many times workers logged ``outcome: delivered`` per event id.

    A worker logs that line only after its ledger write succeeded, and a ledger entry stops
    every later send of the event. So when the stand-in answered an id 200 more often than
    workers logged it delivered, the extra answers are the ones that never reached a living
    worker's ledger (the worker was killed first): exact, no timing window needed.
    """
    counts: collections.Counter = collections.Counter()
    for text in worker_logs:
        for line in text.splitlines():
            if '"delivered"' not in line or '"event_id"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by SIGKILL
            # A verified delivery (``how: verified``) is the ledger catching up on another
            # worker's 200: it is not the answer of a request of its own.
            if (entry.get("outcome") == "delivered" and entry.get("event_id")
                    and entry.get("how") != "verified"):
                counts[entry["event_id"]] += 1
    return counts


def answer_not_in_ledger(received: Iterable[Received], worker_logs: Iterable[str]):
    """This 200 reached no worker's ledger (see :func:`delivered_log_counts`): the earliest
    ``answers - logged`` 200s of each id are the lost ones."""
    logged = delivered_log_counts(worker_logs)
    oks: dict[str, list[Received]] = collections.defaultdict(list)
    for record in received:
        if record.status == 200 and record.event_id is not None:
            oks[record.event_id].append(record)
    lost: set[int] = set()
    for event_id, answers in oks.items():
        answers.sort(key=lambda r: r.at)
        for record in answers[: max(0, len(answers) - logged[event_id])]:
            lost.add(id(record))
    return lambda record: id(record) in lost


def answer_during_kill(kills: Sequence[tuple[float, float]],
                       before_s: float = KILL_WINDOW_BEFORE_S):
    """This 200 (its request arrived at ``record.at``, wall clock) came while a worker was
    being SIGKILLed.

    ``kills`` holds ``(time just before the kill, time the kill returned)`` pairs; a stand-in
    with latency L answers L after arrival, so pass ``before_s`` = L + the default window.
    """
    windows = [(before - before_s, after) for before, after in kills]
    return lambda record: any(lo <= record.at <= hi for lo, hi in windows)


@dataclass
class Report:
    name: str
    enqueued: int
    delivered: int
    dead_lettered: int
    missing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    duplicates: int = 0
    duplicate_ids: list[str] = field(default_factory=list)
    in_doubt_sends: int = 0
    duplicates_after_in_doubt: int = 0
    held: int = 0
    held_recorded_by_api: int = 0
    delivered_and_dead_lettered: list[str] = field(default_factory=list)
    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def duplicate_ratio(self) -> float:
        return self.duplicates / self.enqueued if self.enqueued else 0.0

    def summary(self) -> str:
        lines = [
            f"{self.name}: enqueued {self.enqueued}, delivered {self.delivered}, "
            f"dead-lettered {self.dead_lettered} (held in doubt {self.held}, of which the API "
            f"had recorded {self.held_recorded_by_api}), missing {len(self.missing)}, "
            f"recorded twice or more {len(self.duplicate_ids)} events / {self.duplicates} extra "
            f"200s ({self.duplicate_ratio:.3%}; {self.duplicates_after_in_doubt} of them after "
            f"an in-doubt send), in-doubt sends {self.in_doubt_sends}, "
            f"delivered and dead-lettered {len(self.delivered_and_dead_lettered)}, "
            f"unknown ids {len(self.unknown)}; {self.requests} requests {self.by_status}",
        ]
        lines += [f"  {key}: {value}" for key, value in self.extra.items()]
        return "\n".join(lines)

    def check(self, max_duplicate_ratio: float | None = MAX_DUPLICATE_RATIO) -> None:
        """Raise AssertionError with the summary unless every event is accounted for.
        ``max_duplicate_ratio=None``: duplicates are reported, not judged (policy resend)."""
        problems = []
        if self.missing:
            problems.append(f"{len(self.missing)} missing, e.g. {self.missing[:5]}")
        if self.unknown:
            problems.append(f"{len(self.unknown)} ids nobody enqueued, e.g. {self.unknown[:5]}")
        if max_duplicate_ratio is not None and self.duplicate_ratio > max_duplicate_ratio:
            problems.append(
                f"{self.duplicates} duplicates > {max_duplicate_ratio:.2%}, "
                f"e.g. {self.duplicate_ids[:5]}"
            )
        if self.delivered_and_dead_lettered:
            problems.append(
                f"{len(self.delivered_and_dead_lettered)} events both delivered and "
                f"dead-lettered (not as in_doubt), e.g. {self.delivered_and_dead_lettered[:5]}"
            )
        assert not problems, "; ".join(problems) + "\n" + self.summary()


def account(
    name: str,
    enqueued_ids: Iterable[str],
    received: Iterable[Received],
    dead_lettered_ids: Iterable[str],
    *,
    in_doubt: Callable[[Received], bool] = lambda _record: False,
    held_ids: Iterable[str] = (),
) -> Report:
    """Compare enqueued ids with what the stand-in answered 200 and what was dead-lettered.

    ``received`` is the stand-in's ``received()``; ``in_doubt(record)`` says a 200 never
    reached a living worker (see :func:`answer_after_timeout`, :func:`answer_not_in_ledger`):
    counted beside the duplicates, never subtracted. ``held_ids``: the dead letters with
    reason ``in_doubt``.
    """
    enqueued_set = set(enqueued_ids)
    records = list(received)
    oks: dict[str, list[Received]] = collections.defaultdict(list)
    for record in records:
        if record.status == 200 and record.event_id is not None:
            oks[record.event_id].append(record)
    duplicates: dict[str, int] = {}
    doubtful = after_doubt = 0
    for event_id, answers in oks.items():
        answers.sort(key=lambda r: r.at)
        lost = [in_doubt(r) for r in answers]
        doubtful += sum(lost)
        if len(answers) > 1:
            duplicates[event_id] = len(answers) - 1
            after_doubt += sum(1 for n in range(1, len(answers)) if any(lost[:n]))
    delivered = set(oks)
    dead = set(dead_lettered_ids)
    held = set(held_ids) & dead
    return Report(
        name=name,
        enqueued=len(enqueued_set),
        delivered=len(delivered & enqueued_set),
        dead_lettered=len(dead & enqueued_set),
        missing=sorted(enqueued_set - delivered - dead),
        unknown=sorted((delivered | dead) - enqueued_set),
        duplicates=sum(duplicates.values()),
        duplicate_ids=sorted(duplicates),
        in_doubt_sends=doubtful,
        duplicates_after_in_doubt=after_doubt,
        held=len(held & enqueued_set),
        held_recorded_by_api=len(held & delivered),
        delivered_and_dead_lettered=sorted((delivered & dead) - held),
        requests=len(records),
        by_status=dict(sorted(collections.Counter(str(r.status) for r in records).items())),
    )
