"""The accounting helper itself (pure logic): it must catch what the scenarios rely on it for."""

from __future__ import annotations

import pytest

from tests.chaos.accounting import (
    KILL_WINDOW_BEFORE_S,
    account,
    answer_after_timeout,
    answer_during_kill,
    answer_not_in_ledger,
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


def test_any_duplicate_fails_unless_the_scenario_runs_resend():
    ids = [f"e{i}" for i in range(1000)]
    records = [_rec(i, n) for n, i in enumerate(ids)]
    account("t", ids, records, []).check()
    records.append(_rec("e1", 2000))
    report = account("t", ids, records, [])
    assert report.duplicates == 1 and report.duplicate_ids == ["e1"]
    with pytest.raises(AssertionError, match="1 duplicates"):
        report.check()
    report.check(max_duplicate_ratio=None)  # resend: counted and reported, not judged


def test_an_in_doubt_send_is_reported_beside_the_duplicate_never_subtracted():
    stalled = answer_after_timeout()
    records = [_rec("a", 1, outcome="chaos_stall"), _rec("a", 2), _rec("a", 3)]
    report = account("t", ["a"], records, [], in_doubt=stalled)
    assert (report.duplicates, report.in_doubt_sends, report.duplicates_after_in_doubt) == (
        2, 1, 2)
    with pytest.raises(AssertionError, match="2 duplicates"):
        report.check()


def test_a_duplicate_before_any_in_doubt_send_is_not_attributed_to_one():
    stalled = answer_after_timeout()
    records = [_rec("a", 1), _rec("a", 2, outcome="chaos_stall")]
    report = account("t", ["a"], records, [], in_doubt=stalled)
    assert (report.duplicates, report.in_doubt_sends, report.duplicates_after_in_doubt) == (
        1, 1, 0)


def test_a_held_event_the_api_had_recorded_is_held_not_delivered_and_dead_lettered():
    report = account("t", ["a", "b"], [_rec("a", 1)], ["a", "b"], held_ids=["a", "b"])
    report.check()
    assert (report.held, report.held_recorded_by_api, report.delivered_and_dead_lettered) == (
        2, 1, [])


def test_answer_not_in_ledger_ignores_verified_deliveries():
    logs = ['{"event": "delivery", "event_id": "a", "outcome": "delivered", "how": "verified"}']
    records = [_rec("a", 1)]
    lost = answer_not_in_ledger(records, logs)
    assert lost(records[0]), "a 200 only a verifying worker logged never reached a ledger"


def test_kill_window_is_narrow():
    lost = answer_during_kill([(100.0, 100.02)])
    assert lost(_rec("a", 100.0 - KILL_WINDOW_BEFORE_S + 0.001))
    assert lost(_rec("a", 100.01))
    assert not lost(_rec("a", 100.0 - KILL_WINDOW_BEFORE_S - 0.01))
    assert not lost(_rec("a", 100.03))


def test_delivered_and_dead_lettered_fails():
    report = account("t", ["a"], [_rec("a", 1)], ["a"])
    assert report.delivered_and_dead_lettered == ["a"]
    with pytest.raises(AssertionError, match="both delivered and dead-lettered"):
        report.check()
