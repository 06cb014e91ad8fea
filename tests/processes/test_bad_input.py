"""Bad input at the producer's doors: a clear error or an accepted event, never a crash, never
a hang.

``tests/unit/test_schemas.py`` proves ``validate_event`` on random values. This file goes one door
further out: ``Producer.enqueue_event`` (validation + size cap + event id + what reaches the
queue), raw request bytes as the HTTP ingest endpoint reads them (``producers.serve.body``), and
``voucherify-ingest enqueue`` reading standard input: wrong types, huge strings, deep nesting,
invalid UTF-8, NaN, 10 MB bodies.
"""

from __future__ import annotations

import base64
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers import Producer
from producers.serve.body import BodyError, parse_json
from tests.unit.test_schemas import FULL, json_ish, minimal, mutated_payloads
from voucherify_ingest.errors import InvalidEvent, PayloadTooLarge
from voucherify_ingest.events import validate_event
from voucherify_ingest.messages import EVENT_ID_RE
from voucherify_ingest.settings import Settings

MB = 1024 * 1024
CALL_BOUND_S = 5.0  # a generous bound on one call, even for 10 MB on a busy machine

PROPERTIES = settings(
    max_examples=150, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _producer() -> Producer:
    return Producer(Settings.from_env({"VOUCHERIFY_QUEUE": "q"}), client=fakeredis.FakeRedis())


def _queued(producer: Producer) -> list[dict]:
    envelopes = []
    for raw in producer.redis.lrange("q", 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        envelopes.append(args[0])
    return envelopes


def check_enqueue(payload: Any, event_id: Any = None) -> str | None:
    """Enqueue and check the outcome: the exact accepted event on the queue, or InvalidEvent
    with JSON-ready messages and nothing on the queue. Any other exception fails the test."""
    producer = _producer()
    started = time.perf_counter()
    try:
        returned = producer.enqueue_event(payload, event_id=event_id)
    except InvalidEvent as exc:
        assert isinstance(exc.messages, dict) and exc.messages
        json.dumps(exc.messages, allow_nan=False)
        assert str(exc).startswith("invalid event: ")
        assert _queued(producer) == []
        return None
    finally:
        assert time.perf_counter() - started < CALL_BOUND_S
    (envelope,) = _queued(producer)
    assert envelope["id"] == returned and EVENT_ID_RE.match(returned)
    if event_id is not None:
        assert returned == event_id
    assert envelope["payload"] == validate_event(payload)
    wire = json.dumps(envelope["payload"], allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert len(wire) <= producer.max_payload_bytes
    return returned


# -- Producer.enqueue_event ---------------------------------------------------------------------

event_ids = st.one_of(
    st.none(),
    st.from_regex(EVENT_ID_RE, fullmatch=True),
    st.text(max_size=200),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF,
                                   exclude_categories=()), min_size=1, max_size=3),
    st.integers(),
    st.binary(max_size=8),
    st.sampled_from(["", " ", "a" * 129, "../../etc/passwd", "id\nwith newline", math.nan]),
)


@PROPERTIES
@given(st.one_of(mutated_payloads(), json_ish), event_ids)
def test_random_payloads_and_ids_are_stored_exactly_or_refused(payload, event_id):
    check_enqueue(payload, event_id)


@PROPERTIES
@given(st.dictionaries(st.text(max_size=3), json_ish, max_size=3), st.data())
def test_random_extra_fields_at_every_level_are_refused_by_name(extra, data):
    level = data.draw(st.sampled_from([(), ("customer",), ("customer", "address"),
                                       ("referral",), ("loyalty",)]))
    payload = json.loads(json.dumps(FULL))
    node = payload
    for part in level:
        node = node.setdefault(part, {"code": "x"} if part in ("referral", "loyalty") else {})
    unknown = {k: v for k, v in extra.items() if k not in node and k}
    node.update(unknown)
    if check_enqueue(payload) is not None:
        assert not unknown  # only an event without unknown fields is accepted


HUGE_SIZES = [300, 301, 64 * 1024, 64 * 1024 + 1, MB, 10 * MB]


@pytest.mark.parametrize("size", HUGE_SIZES)
@pytest.mark.parametrize("where", ["event", "source_id", "email", "metadata value",
                                   "metadata key", "unknown field"])
def test_huge_strings_are_refused_quickly_or_accepted_under_the_caps(size, where):
    text = "x" * size
    payload = minimal()
    if where == "event":
        payload["event"] = text
    elif where == "source_id":
        payload["customer"] = {"source_id": text}
    elif where == "email":
        payload["customer"] = {"id": "c", "email": text}
    elif where == "metadata value":
        payload["metadata"] = {"k": text}
    elif where == "metadata key":
        payload["metadata"] = {text: 1}
    else:
        payload[text] = 1
    accepted = check_enqueue(payload)
    if size > 64 * 1024 or (where == "event" and size > 300) or where == "unknown field":
        assert accepted is None


def test_ten_megabyte_payload_of_many_small_values_is_refused_quickly():
    payload = minimal(metadata={f"k{i}": "v" * 90 for i in range(100_000)})  # ~10 MB
    with pytest.raises(PayloadTooLarge):
        _producer().enqueue_event(payload)


def _deep(depth: int, kind: str) -> Any:
    node: Any = "leaf"
    for _ in range(depth):
        node = [node] if kind == "list" else {"k": node}
    return node


@settings(max_examples=40, deadline=None, database=None)
@given(
    st.one_of(st.integers(1, 40), st.integers(40, 200_000)),
    st.sampled_from(["list", "dict"]),
    st.sampled_from(["metadata", "customer.metadata", "customer.address", "referral",
                     "unknown", "event"]),
)
def test_deep_nesting_is_refused_or_accepted_without_recursion_error(depth, kind, where):
    deep = _deep(depth, kind)
    payload = minimal(customer={"id": "c"})
    if where == "metadata":
        payload["metadata"] = {"deep": deep}
    elif where == "customer.metadata":
        payload["customer"]["metadata"] = {"deep": deep}
    elif where == "customer.address":
        payload["customer"]["address"] = {"city": deep}
    elif where == "referral":
        payload["referral"] = {"code": deep}
    elif where == "unknown":
        payload["nested"] = deep
    else:
        payload["event"] = deep
    accepted = check_enqueue(payload)
    if depth > 40:
        assert accepted is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["event", "metadata", "customer.metadata", "customer.id"])
def test_nan_and_infinity_never_reach_the_queue(bad, where):
    payload = minimal(customer={"id": "c"})
    if where == "event":
        payload["event"] = bad
    elif where == "metadata":
        payload["metadata"] = {"total": bad}
    elif where == "customer.metadata":
        payload["customer"]["metadata"] = {"x": [1, bad]}
    else:
        payload["customer"]["id"] = bad
    assert check_enqueue(payload) is None


# -- raw bytes, as the HTTP ingest endpoint reads them ------------------------------------------

_GOOD = json.dumps(FULL).encode()


@st.composite
def corrupted_bodies(draw) -> bytes:
    """A real event's JSON with bytes flipped, cut, inserted (invalid UTF-8 among them)."""
    raw = bytearray(_GOOD)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "nan", "deep", "bignum"]))
        at = draw(st.integers(0, len(raw)))
        if action == "flip" and raw:
            raw[min(at, len(raw) - 1)] = draw(st.integers(0, 255))
        elif action == "cut":
            del raw[at:]
        elif action == "insert":
            raw[at:at] = draw(st.sampled_from(
                [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\\ud800", b'"', b"{", b"]"]))
        elif action == "nan":
            raw = bytearray(_GOOD.replace(b'"value"', draw(st.sampled_from(
                [b"NaN", b"Infinity", b"-Infinity", b"1e999"]))))
        elif action == "deep":
            n = draw(st.integers(1, 100_000))
            raw[at:at] = b"[" * n + b"]" * n
        else:
            raw[at:at] = b"9" * draw(st.integers(1, 10_000))
    return bytes(raw)


@PROPERTIES
@given(st.one_of(st.binary(max_size=512), corrupted_bodies()))
def test_raw_bodies_give_a_body_error_an_invalid_event_or_an_event(raw):
    started = time.perf_counter()
    try:
        value = parse_json(raw)
    except BodyError as exc:
        assert str(exc)
        return
    finally:
        assert time.perf_counter() - started < CALL_BOUND_S
    check_enqueue(value)


# -- voucherify-ingest enqueue, standard input ---------------------------------------------------

CLI_CASES = {
    "invalid utf-8": b"\xff\xfe{\"event\": \"x\"}",
    "utf-8 then garbage": _GOOD[:40] + b"\xc3\x28" + _GOOD[40:],
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "10 MB body": b'{"event":"x","customer":{"id":"c"},"metadata":{"a":"' + b"x" * 10 * MB
    + b'"}}',
    "NaN literal": b'{"event":"x","customer":{"id":"c"},"metadata":{"a":NaN}}',
    "empty": b"",
    "binary": bytes(range(256)) * 4,
    "not an object": b"[1, 2, 3]",
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_enqueue_answers_bad_stdin_with_one_clear_line(name, redis_url, namespace,
                                                            redis_client):
    env = {**os.environ, "REDIS_URL": redis_url, "VOUCHERIFY_QUEUE": f"{namespace}-events",
           "VOUCHERIFY_KEY_PREFIX": namespace}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "voucherify_ingest.cli", "enqueue"],
                          input=CLI_CASES[name], env=env, capture_output=True, timeout=60)
    assert time.monotonic() - started < 30
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode in (1, 2), (done.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert ("invalid event" in err) or ("not valid JSON" in err) or ("Error:" in err), err
    assert len(err) < 4000, "the error names the problem, it does not echo the input"
    assert redis_client.llen(f"{namespace}-events") == 0
