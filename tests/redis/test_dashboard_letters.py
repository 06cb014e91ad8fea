"""The dead-letter page's reads on real Redis: a status held under one reason walks only that
reason's index and finds the same entries; a customer search continues by its cursor."""

from __future__ import annotations

import time

from voucherify_ingest.dashboard import letters as letters_module
from voucherify_ingest.dashboard.letters import Letters, Query
from voucherify_ingest.deadletters import DeadLetterQueue, make_entry
from voucherify_ingest.keys import Keys


def _seed(dlq: DeadLetterQueue, n: int) -> None:
    base = time.time() - n
    with dlq.redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            rare = i % 97 == 0
            dlq.add(make_entry(event_id=f"e-{i:04d}", reason="rejected" if rare else
                               "retries_exhausted", error={"status": 404 if rare else 503},
                               payload={"event": "x", "customer": {"source_id": f"c-{i % 10}"}},
                               now_s=base + i), pipe)
        pipe.execute()


def test_a_status_under_one_reason_is_narrowed_and_finds_the_same(redis_client, namespace):
    dlq = DeadLetterQueue(redis_client, Keys(prefix=namespace, queue=f"{namespace}-q"))
    _seed(dlq, 1000)
    view = Letters(dlq)
    query = Query.parse({"status": "404"})
    assert view._narrowed(query) == {"status": "404", "reason": "rejected"}
    shown = [e["id"] for e in view.page(query).entries]
    assert shown == [e["id"] for e in dlq.list(limit=50, status="404").entries]
    assert shown == [f"e-{i:04d}" for i in range(999, -1, -1) if i % 97 == 0]
    # 503 is held by one reason too; a status held by none walks nothing
    assert view._narrowed(Query.parse({"status": "500"})) == {"status": "500"}


def test_customer_search_is_bounded_per_request_and_continues(redis_client, namespace,
                                                             monkeypatch):
    monkeypatch.setattr(letters_module, "SEARCH_BUDGET", 200)
    dlq = DeadLetterQueue(redis_client, Keys(prefix=namespace, queue=f"{namespace}-q"))
    _seed(dlq, 1000)
    view = Letters(dlq)
    query = Query.parse({"q": "c-3"})
    found, cursor, requests = [], None, 0
    while True:
        listing = view.page(query, cursor)
        requests += 1
        found += [e["id"] for e in listing.entries]
        cursor = listing.next_cursor
        if cursor is None:
            break
    assert found == [f"e-{i:04d}" for i in range(999, -1, -1) if i % 10 == 3]
    # each request stops once past the budget (chunks of 50, 100, 200: 350 entries), so the
    # 1,000 entries take three requests, continued by the cursor without loss or repeat
    assert requests == 3
    assert view.count(query, for_replay=False) == 100


def test_replay_and_purge_by_customer_take_what_the_count_said(redis_client, namespace):
    keys = Keys(prefix=namespace, queue=f"{namespace}-q")
    dlq = DeadLetterQueue(redis_client, keys)
    _seed(dlq, 100)
    dlq.add(make_entry(event_id="bad-1", reason="invalid", payload={"customer": {
        "source_id": "c-3"}}, now_s=time.time() - 1))
    view = Letters(dlq)
    query = Query.parse({"q": "c-3"})
    assert view.count(query, for_replay=True) == 10  # the invalid one is not replayed
    assert view.count(query, for_replay=False) == 11
    assert view.replay(query=query, until=time.time()) == 10
    assert redis_client.llen(keys.lane_queue("bulk")) == 10  # replays are a backlog: bulk
    assert [e["id"] for e in view.page(query).entries] == ["bad-1"]
    assert view.purge(query=query, until=time.time()) == 1
    assert dlq.count() == 90
