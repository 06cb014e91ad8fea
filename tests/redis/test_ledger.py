"""The delivery ledger's scripts on a real Redis: owner-checked release, send records, in doubt."""

from __future__ import annotations

import pytest

from voucherify_ingest.indoubt import SendRecord
from voucherify_ingest.keys import Keys
from worker.ledger import (
    ALREADY_DELIVERED,
    BUSY,
    CLAIMED,
    DROP,
    IN_DOUBT,
    KEEP,
    NOTE,
    DeliveryLedger,
)


@pytest.fixture
def ledger(redis_client, namespace):
    return DeliveryLedger(redis_client, Keys(namespace, namespace), ttl_s=60, inflight_ttl_s=5)


@pytest.fixture
def keys(namespace):
    return Keys(namespace, namespace)


def _run(redis_client, fill):
    with redis_client.pipeline() as pipe:
        fill(pipe)
        pipe.execute()


def test_a_late_release_does_not_free_another_workers_claim(ledger, redis_client, keys):
    assert ledger.claim("e1", "worker-a") == CLAIMED
    redis_client.delete(keys.inflight("e1"))  # a's claim lapsed (its answer came too late)
    assert ledger.claim("e1", "worker-b") == CLAIMED
    _run(redis_client, lambda pipe: ledger.release(pipe, "e1", "worker-a", DROP))
    assert redis_client.get(keys.inflight("e1")) == b"worker-b"
    assert ledger.claim("e1", "worker-c") == BUSY
    _run(redis_client, lambda pipe: ledger.release(pipe, "e1", "worker-b", DROP))
    assert not redis_client.exists(keys.inflight("e1"))


def test_delivered_clears_the_send_record_but_not_another_workers_claim(
    ledger, redis_client, keys
):
    ledger.claim("e2", "worker-a", SendRecord("worker-a", 1.0))
    redis_client.delete(keys.inflight("e2"))
    redis_client.set(keys.inflight("e2"), "worker-b")
    _run(redis_client, lambda pipe: ledger.mark_delivered(pipe, "e2", "worker-a"))
    assert redis_client.get(keys.inflight("e2")) == b"worker-b"
    assert not redis_client.exists(keys.sent("e2"))
    assert ledger.claim("e2", "worker-c") == ALREADY_DELIVERED


def test_a_send_record_left_behind_makes_the_next_claim_in_doubt(ledger, redis_client, keys):
    sent = SendRecord("worker-a", 1_700_000_000.0)
    assert ledger.claim("e3", "worker-a", sent) == CLAIMED  # then worker-a died
    redis_client.delete(keys.inflight("e3"))  # its claim expired
    code, record = ledger.claim_with_record("e3", "worker-b", SendRecord("worker-b", 2.0))
    assert code == IN_DOUBT and record.by == "worker-a" and record.sent_at == sent.sent_at
    assert ledger.send_record("e3").by == "worker-a", "the evidence must not be overwritten"
    assert ledger.claim_many(["e3", "e4"], "worker-b") == [IN_DOUBT, CLAIMED]


def test_release_keeps_drops_or_notes_the_send_record(ledger, redis_client, keys):
    ledger.claim("e5", "w", SendRecord("w", 5.0))
    _run(redis_client, lambda pipe: ledger.release(pipe, "e5", "w", NOTE,
                                                   SendRecord("w", 5.0, "timed out")))
    assert ledger.send_record("e5").what == "timed out"
    assert not redis_client.exists(keys.inflight("e5"))
    ledger.claim("e5", "w2")
    _run(redis_client, lambda pipe: ledger.release(pipe, "e5", "w2", KEEP))
    assert ledger.send_record("e5") is not None
    # someone else's record, someone else's claim: a stranger's DROP touches nothing
    redis_client.set(keys.inflight("e5"), "w3")
    _run(redis_client, lambda pipe: ledger.release(pipe, "e5", "stranger", DROP))
    assert ledger.send_record("e5") is not None
    assert redis_client.get(keys.inflight("e5")) == b"w3"
    # the claim holder settles it: the dead sender's record goes
    _run(redis_client, lambda pipe: ledger.release(pipe, "e5", "w3", DROP))
    assert ledger.send_record("e5") is None
