"""The accounting helper itself (pure logic): it must catch what the scenarios rely on it for."""

from __future__ import annotations

import pytest

from tests.chaos.accounting import (
    KILL_WINDOW_BEFORE_S,
    account,
    answer_after_timeout,
    answer_during_kill,
)
from voucherify_ingest.standin import Received


def _rec(event_id: str, at: float, status: int = 200, outcome: str = "ok") -> Received:
    return Received(at=at, mono=at, event_id=event_id, body={}, headers={}, status=status,
                    schema_valid=True, outcome=outcome)


def test_everything_delivered_once_passes():
    report = account("t", ["a", "b"], [_rec("a", 1), _rec("b", 2)], [])
    report.check()
    assert (report.delivered, report.duplicates, report.missing) == (2, 0, [])


def test_missing_unknown_and_dead_letters():
    report = account("t", ["a", "b", "c"], [_rec("a", 1), _rec("x", 2), _rec("b", 3, 503)],
                     ["c"])
    assert report.missing == ["b"]
    assert report.unknown == ["x"]
    assert report.dead_lettered == 1
    with pytest.raises(AssertionError, match="1 missing"):
        report.check()


def test_duplicates_over_a_tenth_of_a_percent_fail():
    ids = [f"e{i}" for i in range(1000)]
    records = [_rec(i, n) for n, i in enumerate(ids)] + [_rec("e1", 2000)]
    account("t", ids, records, []).check()  # 1 in 1,000 is the limit
    records.append(_rec("e2", 2001))
    report = account("t", ids, records, [])
    assert report.duplicates == 2 and report.duplicate_ids == ["e1", "e2"]
    with pytest.raises(AssertionError, match="2 duplicates"):
        report.check()


def test_a_lost_answer_excuses_exactly_the_resend_it_caused():
    stalled = answer_after_timeout()
    records = [_rec("a", 1, outcome="chaos_stall"), _rec("a", 2), _rec("a", 3)]
    report = account("t", ["a"], records, [], answer_lost=stalled)
    assert (report.resent_answer_lost, report.duplicates) == (1, 1)


def test_the_last_200_never_excuses_an_earlier_one():
    stalled = answer_after_timeout()
    records = [_rec("a", 1), _rec("a", 2, outcome="chaos_stall")]
    report = account("t", ["a"], records, [], answer_lost=stalled)
    assert (report.resent_answer_lost, report.duplicates) == (0, 1)


def test_kill_window_is_narrow():
    lost = answer_during_kill([(100.0, 100.02)])
    assert lost(_rec("a", 100.0 - KILL_WINDOW_BEFORE_S + 0.001))
    assert lost(_rec("a", 100.01))
    assert not lost(_rec("a", 100.0 - KILL_WINDOW_BEFORE_S - 0.01))
    assert not lost(_rec("a", 100.03))


def test_delivered_and_dead_lettered_counts_against_the_limit():
    report = account("t", ["a"], [_rec("a", 1)], ["a"])
    assert report.delivered_and_dead_lettered == ["a"]
    with pytest.raises(AssertionError, match="both delivered and dead-lettered"):
        report.check()
