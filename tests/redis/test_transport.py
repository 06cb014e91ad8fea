"""worker.transport at the Redis level: the atomic take, and kombu reading what it wrote.

The chaos suite proves the end result (a SIGKILL every 2 s loses nothing); these tests pin the
pieces: the script records exactly what kombu's ``QoS.append`` would, kombu's own restore can
put it back, and unreadable items are returned, not recorded.
"""

from __future__ import annotations

import json

import pytest
from kombu import Connection

from voucherify_ingest.messages import build_message, make_envelope
from worker.transport import TAKE_LUA, Transport, inspect_item, unreadable_message


@pytest.fixture
def keys(namespace):
    queue = f"{namespace}-events"
    return {"queue": queue, "index": f"{namespace}:unacked_index",
            "unacked": f"{namespace}:unacked"}


def _take(client, keys, *queues, now="1700000000.5"):
    names = list(queues) or [keys["queue"]]
    return client.eval(TAKE_LUA, len(names) + 2, *names, keys["index"], keys["unacked"], now)


def _message(queue: str) -> bytes:
    return build_message("voucherify.deliver_event", [make_envelope({"event": "e"})],
                         queue).encode()


def test_take_pops_and_records_like_kombu_in_one_step(redis_client, keys):
    first, second = _message(keys["queue"]), _message(keys["queue"])
    redis_client.lpush(keys["queue"], first, second)
    dest, item, recorded = _take(redis_client, keys)
    assert (dest.decode(), item, recorded) == (keys["queue"], first, 1)  # oldest first
    tag = json.loads(first)["properties"]["delivery_tag"]
    assert redis_client.zscore(keys["index"], tag) == 1700000000.5
    stored, exchange, routing_key = json.loads(redis_client.hget(keys["unacked"], tag))
    assert stored == json.loads(first)
    assert (exchange, routing_key) == ("", keys["queue"])
    assert redis_client.lrange(keys["queue"], 0, -1) == [second]


def test_take_on_empty_lists_is_nil(redis_client, keys):
    assert _take(redis_client, keys, keys["queue"], keys["queue"] + "\x06\x163") is None


def test_take_follows_the_key_order(redis_client, keys):
    high = keys["queue"] + "\x06\x163"
    redis_client.lpush(keys["queue"], _message(keys["queue"]))
    redis_client.lpush(high, _message(keys["queue"]))
    dest, _item, _recorded = _take(redis_client, keys, keys["queue"], high)
    assert dest.decode() == keys["queue"]


@pytest.mark.parametrize("item", [b"not json", b"\xff\xfe", b"[1,2]", b'{"properties": 1}',
                                  b'{"properties": {"delivery_tag": 5}}',
                                  b'{"properties": {"delivery_tag": "t", "delivery_info": {}}}'])
def test_unreadable_items_are_popped_but_not_recorded(redis_client, keys, item):
    redis_client.lpush(keys["queue"], item)
    _dest, got, recorded = _take(redis_client, keys)
    assert (got, recorded) == (item, 0)
    assert redis_client.hlen(keys["unacked"]) == 0 and redis_client.zcard(keys["index"]) == 0


def test_kombu_restores_what_the_script_recorded(redis_url, redis_client, keys):
    raw = _message(keys["queue"])
    redis_client.lpush(keys["queue"], raw)
    _take(redis_client, keys)
    tag = json.loads(raw)["properties"]["delivery_tag"]
    options = {"unacked_key": keys["unacked"], "unacked_index_key": keys["index"],
               "unacked_mutex_key": keys["index"] + "_mutex"}
    with Connection(redis_url, transport=Transport, transport_options=options) as conn:
        channel = conn.default_channel
        channel.qos.restore_by_tag(tag)
    (back,) = redis_client.lrange(keys["queue"], 0, -1)
    restored = json.loads(back)
    assert restored["properties"]["delivery_tag"] == tag
    assert restored["headers"]["redelivered"] is True
    assert redis_client.hlen(keys["unacked"]) == 0


def test_inspect_item(redis_url, keys):
    with Connection(redis_url, transport=Transport) as conn:
        channel = conn.default_channel
        good = _message(keys["queue"])
        assert inspect_item(channel, good) == (json.loads(good), "")
        bad_body = json.loads(good)
        bad_body["body"] = "!!not base64!!"
        for item, why in [
            (b"\xff", "not JSON"),
            (b'{"a": 1}', "no properties"),
            (b'{"properties": {"delivery_tag": "t"}}', "without a delivery tag"),
            (json.dumps(bad_body).encode(), "cannot be decoded"),
        ]:
            message, reason = inspect_item(channel, item)
            assert message is None and why in reason


def test_unreadable_message_is_a_consumable_wrapper():
    wrapped = unreadable_message(b"\xff" * 100_000, "q", "not JSON", tag="t1")
    assert wrapped["properties"]["delivery_tag"] == "t1"
    assert wrapped["headers"]["x-raw-bytes"] == 100_000
    assert len(wrapped["body"]) < 100_000  # only the first 64 KB are kept
    json.dumps(wrapped)
