"""The per-event fast paths must give exactly what the reference paths give.

``parse_event_json`` (orjson) against ``parse_json`` (the standard library): same values with the
same types, or the same ``BodyError`` message. ``fast_validate(fresh=True)`` on what it parsed
against the schemas. ``jsoncodec.dumps`` against ``json.dumps``. The message builder's shortcuts
for plain event ids against the general path. And the server's ``LPUSH`` connection on real
Redis: error replies and killed connections.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import uuid

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from producers.serve.body import JSON_MAX_DEPTH, BodyError, parse_event_json, parse_json
from producers.serve.pusher import BatchPusher, make_async_redis
from tests.unit.test_schemas import FULL, PROPERTY_SETTINGS, minimal, mutated_payloads
from voucherify_ingest import jsoncodec
from voucherify_ingest.errors import InvalidEvent
from voucherify_ingest.events import METADATA_MAX_DEPTH, fast_validate, validate_with_schemas
from voucherify_ingest.messages import event_message, make_envelope, new_event_id
from voucherify_ingest.settings import Settings


def typed(value):
    """``value`` with its types visible: ``1 == 1.0`` in Python, not here."""
    return json.dumps(value, default=repr, allow_nan=True, sort_keys=False)


def parse_both(raw: bytes):
    """Return the parsed value and freshness, after asserting both parsers agree."""
    try:
        expected = parse_json(raw)
    except BodyError as exc:
        with pytest.raises(BodyError) as info:
            parse_event_json(raw)
        assert str(info.value) == str(exc)
        return None, False
    value, fresh = parse_event_json(raw)
    assert typed(value) == typed(expected)
    return value, fresh


def validates_the_same(value, fresh: bool) -> None:
    try:
        expected = validate_with_schemas(value)
    except InvalidEvent:
        assert fast_validate(value, fresh=fresh) is None
        return
    fast = fast_validate(value, fresh=fresh)
    if fast is not None:
        assert typed(fast) == typed(expected)


TRICKY_BODIES = [
    b"", b"   ", b"{", b"{}", b"[]", b"null", b"1", b'"x"', b"\xef\xbb\xbf{}", b"{}\x00",
    b'{"a":1,"a":2}', b"[1,]", b'{"a":01}', b"-0", b"-0.0", b"1E5", b"1e400", b"-1e400",
    b"NaN", b"Infinity", b'"\\ud800"', b'{"\\udc00":1}', b'"\\ud83d\\ude00"', b'"\xed\xa0\x80"',
    b'"\xff"', b"123456789012345678", b"1234567890123456789", b"9223372036854775807",
    b"9223372036854775808", b"-9223372036854775809", b"18446744073709551616",
    b"1" * 5000, b"0.12345678901234567890123", b'{"event":"e","customer":{"id":"c"}}\n',
    b'{"event":"e","customer":{"id":"c"},"metadata":{"n":12345678901234567890}}',
    b'{"event":"e","customer":{"id":"c"},"metadata":{"n":1e400}}',
    b'{"event":"e","customer":{"id":"c"},"metadata":{"s":"\\ud800"}}',
    b'{"event":"e","customer":{"id":"c","metadata":{"\\ud800":1}}}',
]


@pytest.mark.parametrize("raw", TRICKY_BODIES, ids=range(len(TRICKY_BODIES)))
def test_tricky_bodies_parse_and_validate_the_same(raw):
    value, fresh = parse_both(raw)
    if isinstance(value, dict):
        validates_the_same(value, fresh)


@pytest.mark.parametrize("depth", [METADATA_MAX_DEPTH - 3, METADATA_MAX_DEPTH - 1,
                                   METADATA_MAX_DEPTH, METADATA_MAX_DEPTH + 1,
                                   JSON_MAX_DEPTH - 1, JSON_MAX_DEPTH, JSON_MAX_DEPTH + 1])
def test_nesting_around_the_limits(depth):
    nested: object = 1
    for _ in range(depth):
        nested = {"m": nested}
    raw = json.dumps(minimal(metadata=nested)).encode()
    value, fresh = parse_both(raw)
    if value is not None:
        assert fresh == (raw.count(b"{") <= METADATA_MAX_DEPTH)
        validates_the_same(value, fresh)


def test_a_plain_event_is_read_fresh_and_takes_the_fast_path():
    value, fresh = parse_event_json(json.dumps(FULL).encode())
    assert fresh
    wire = fast_validate(value, fresh=True)
    assert wire == validate_with_schemas(FULL)
    assert wire["metadata"] is value["metadata"]  # taken over, not copied


def _bodies(payload) -> list[bytes]:
    try:
        text = json.dumps(payload, ensure_ascii=False)
    except (TypeError, ValueError):  # not JSON at all (bytes, sets, non-str keys...)
        return []
    out = [text.encode("utf-8", "surrogatepass"), json.dumps(payload).encode()]
    return out + [json.dumps(payload, indent=2).encode()]


@PROPERTY_SETTINGS
@given(mutated_payloads())
def test_mutated_payloads_as_json_parse_and_validate_the_same(payload):
    for raw in _bodies(payload):
        value, fresh = parse_both(raw)
        if isinstance(value, dict):
            validates_the_same(value, fresh)


@PROPERTY_SETTINGS
@given(st.binary(max_size=64) | st.text(max_size=64).map(lambda t: t.encode("utf-8", "replace")))
def test_arbitrary_bytes_parse_the_same(raw):
    parse_both(raw)


def test_dumps_matches_the_standard_library_and_falls_back_where_orjson_refuses():
    for value in (FULL, [1e16, 1.0, -0.0, 1e-7, 2**63 - 1, "é\u2028\x00", None, True]):
        assert json.loads(jsoncodec.dumps(value)) == value
    assert jsoncodec.dumps({"n": 2**64}) == b'{"n":18446744073709551616}'
    assert jsoncodec.dumps({1: "a"}) == b'{"1":"a"}'
    assert jsoncodec.has_long_digit_run(b'{"n":1234567890123456789}')
    assert not jsoncodec.has_long_digit_run(b'{"n":123456789012345678,"m":12345678901234567}')
    with pytest.raises(ValueError):
        jsoncodec.loads_fast(b"1234567890123456789")


def test_new_event_ids_are_random_version_4_uuids():
    ids = [new_event_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize("event_id", ["plain-id:1.2_3", "it's", 'say "hi"', "50%s", "é"])
def test_event_message_argsrepr_and_ids_for_any_id(event_id):
    envelope = make_envelope({"event": "e", "customer": {"id": "c"}}, event_id)
    message = json.loads(event_message(envelope, "queue%s"))
    assert message["headers"]["id"] == message["headers"]["root_id"] == event_id
    assert message["properties"]["correlation_id"] == event_id
    assert message["headers"]["argsrepr"] == repr((event_id,))
    assert message["properties"]["delivery_info"]["routing_key"] == "queue%s"
    assert json.loads(base64.b64decode(message["body"]))[0] == [envelope]
    assert not math.isnan(len(message["properties"]["delivery_tag"]))


def _pusher_settings(url: str, queue: str) -> Settings:
    return Settings.from_env({"REDIS_URL": url, "VOUCHERIFY_QUEUE": queue,
                              "VOUCHERIFY_REDIS_TIMEOUT_S": "0.5"})


def test_pusher_passes_on_a_redis_error_reply_and_stores_nothing(redis_url, namespace,
                                                                 redis_client):
    redis_client.set(namespace, "not a list")  # LPUSH answers WRONGTYPE

    async def main() -> list:
        pusher = BatchPusher(make_async_redis(_pusher_settings(redis_url, namespace)), namespace)
        results = await asyncio.gather(*(pusher.push(f"m{i}") for i in range(10)),
                                       return_exceptions=True)
        redis_client.delete(namespace)
        results.append(await asyncio.gather(pusher.push("after"), return_exceptions=True))
        await pusher.close()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, redis.ResponseError) for r in results[:10]), results
    assert results[10] == [None]  # the connection is still good after an error reply
    assert redis_client.lrange(namespace, 0, -1) == [b"after"]


def test_pusher_reconnects_when_redis_closed_its_connection(redis_url, namespace, redis_client):
    async def main() -> None:
        pusher = BatchPusher(make_async_redis(_pusher_settings(redis_url, namespace)), namespace)
        await pusher.push("first")
        killed = 0
        for client in redis_client.client_list():
            if client.get("name") == "voucherify-ingest-serve":
                killed += redis_client.client_kill_filter(_id=client["id"])
        assert killed == 1
        await pusher.push("second")  # the dead connection is noticed and replaced at once
        await pusher.close()

    asyncio.run(main())
    assert [m.decode() for m in reversed(redis_client.lrange(namespace, 0, -1))] == [
        "first", "second"]


def test_delivery_tags_are_unique_and_a_forked_child_does_not_repeat_them():
    def tag() -> str:
        return json.loads(event_message(make_envelope({"event": "e"}), "q"))["properties"][
            "delivery_tag"]

    tags = [tag() for _ in range(1000)]
    assert len(set(tags)) == len(tags)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child writes its next tags and leaves at once
        os.write(write_end, " ".join(tag() for _ in range(100)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write_end)
    child_tags = os.read(read_end, 1 << 16).decode().split()
    os.close(read_end)
    parent_tags = [tag() for _ in range(100)]
    assert len(child_tags) == 100
    assert not set(child_tags) & set(parent_tags + tags)
