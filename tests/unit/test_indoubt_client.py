"""What one attempt may leave in doubt, its total deadline, the marker, and the activity lookup
(the real client against the loopback stand-in, or a raw socket server for trickled answers)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from voucherify_ingest.errors import ConfigError, RetryableDelivery
from voucherify_ingest.indoubt import HOLD, RESEND, VERIFY, Policies, SendRecord
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import drop, respond, stall
from worker.activity import ABSENT, FAILED, FOUND, ActivityLookup, matches
from worker.client import VoucherifyClient

MARKER = "ingest_event_id"


def _settings(url: str, **extra: str) -> Settings:
    return Settings.from_env({
        "VOUCHERIFY_API_URL": url, "VOUCHERIFY_APP_ID": "app",
        "VOUCHERIFY_APP_TOKEN": "token-123456", "VOUCHERIFY_READ_TIMEOUT_S": "0.5",
        "VOUCHERIFY_CONNECT_TIMEOUT_S": "0.5", **extra,
    })


@pytest.fixture
def client(api):
    c = VoucherifyClient(_settings(api.url, VOUCHERIFY_EVENT_ID_METADATA_KEY=MARKER))
    yield c
    c.close()


EVENT = {"event": "order_paid", "customer": {"source_id": "u/1 x"}, "metadata": {"n": 1}}


# -- what is in doubt ---------------------------------------------------------------------------


@pytest.mark.parametrize("action", [stall(1.0), drop()], ids=["read-timeout", "dropped"])
def test_a_request_that_may_have_arrived_is_in_doubt(api, client, action):
    api.plan(action)
    with pytest.raises(RetryableDelivery) as info:
        client.send_event(EVENT, "e-1")
    assert info.value.in_doubt


def test_an_error_answer_is_not_in_doubt(api, client):
    api.plan(respond(503))
    with pytest.raises(RetryableDelivery) as info:
        client.send_event(EVENT, "e-2")
    assert not info.value.in_doubt


def test_a_refused_connection_is_not_in_doubt():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = VoucherifyClient(_settings(f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(RetryableDelivery) as info:
            client.send_event(EVENT, "e-3")
        assert not info.value.in_doubt, str(info.value)
    finally:
        client.close()


def test_the_marker_puts_the_event_id_into_the_metadata_on_the_wire(api, client):
    client.send_event(EVENT, "e-4")
    (record,) = api.received()
    assert record.body["metadata"] == {"n": 1, MARKER: "e-4"}
    assert EVENT["metadata"] == {"n": 1}, "the caller's payload must not change"


# -- the total deadline of one attempt ----------------------------------------------------------


class _Trickler(threading.Thread):
    """Answers the status line and headers at once, then one body byte every ``every_s``: each
    read is within the read timeout, the whole answer never is."""

    def __init__(self, status: int, every_s: float = 0.2, length: int = 200):
        super().__init__(daemon=True)
        self.status, self.every_s, self.length = status, every_s, length
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.stop = threading.Event()

    def run(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {self.length}\r\n\r\n".encode())
            for _ in range(self.length):
                if self.stop.wait(self.every_s):
                    return
                try:
                    conn.sendall(b" ")
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.server.close()


@pytest.mark.parametrize("status", [200, 503])
def test_one_attempt_ends_by_its_total_deadline_however_the_answer_trickles(status):
    server = _Trickler(status)
    server.start()
    client = VoucherifyClient(_settings(server.url))  # 0.5 s connect + 0.5 s read: 1 s total
    try:
        started = time.monotonic()
        if status == 200:  # the API said 200: delivered, even with its body cut short
            assert client.send_event(EVENT, "e-5").status == 200
        else:
            with pytest.raises(RetryableDelivery) as info:
                client.send_event(EVENT, "e-5")
            assert info.value.status == 503 and not info.value.in_doubt
        took = time.monotonic() - started
        assert took < 1.0 + 0.3, f"the attempt took {took:.2f}s, past its 1 s deadline"
    finally:
        client.close()
        server.close()


# -- the activity lookup ------------------------------------------------------------------------


def test_lookup_pages_through_the_activity_and_finds_the_event(api, client):
    for n in range(150):  # more than one page (100 per page) for one customer
        client.send_event(EVENT, f"p-{n}")
    lookup = ActivityLookup(client, MARKER, window_s=60)
    now = time.time()
    slots = []
    result = lookup.find(EVENT, "p-0", now - 5, now, take_slot=lambda: slots.append(1))
    assert result.verdict == FOUND and result.pages == 2 == len(slots)  # newest first
    assert lookup.find(EVENT, "p-nope", now - 5, now).verdict == ABSENT
    assert api.stats()["lookups"] == 2 + 2


def test_lookup_of_an_unknown_customer_is_absent_and_a_5xx_fails(api, client):
    lookup = ActivityLookup(client, MARKER, window_s=60)
    now = time.time()
    unknown = {"event": "x", "customer": {"source_id": "never-seen"}}
    assert lookup.find(unknown, "e", now, now).verdict == ABSENT
    api.set_activity(fail=503)
    assert lookup.find(EVENT, "e", now, now).verdict == FAILED


def test_lookup_matches_the_spec_shape_and_the_webhook_shape():
    event = {"type": "order_paid", "metadata": {MARKER: "e-9"}}
    assert matches({"data": {"data": {"event": event}}}, MARKER, "e-9", "order_paid")
    assert matches({"data": {"event": event}}, MARKER, "e-9", "order_paid")
    assert not matches({"data": {"data": {"event": event}}}, MARKER, "e-8", "order_paid")
    assert not matches({"data": {"data": {"event": event}}}, MARKER, "e-9", "page_view")
    assert not matches({"data": None}, MARKER, "e-9", "order_paid")


# -- settings -----------------------------------------------------------------------------------


def test_default_policy_is_verify_with_a_marker_else_hold():
    assert Policies.from_settings(Settings()).default == HOLD
    assert Policies.from_settings(Settings(event_id_metadata_key=MARKER)).default == VERIFY
    policies = Policies.from_settings(Settings.from_env(
        {"VOUCHERIFY_IN_DOUBT_EVENTS": "order_paid=hold, page_view=resend"}))
    assert policies.for_event("order_paid") == HOLD
    assert policies.for_event("page_view") == RESEND
    assert policies.for_event("other") == HOLD


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"VOUCHERIFY_IN_DOUBT": "maybe"}, "VOUCHERIFY_IN_DOUBT"),
        ({"VOUCHERIFY_IN_DOUBT": "verify"}, "VOUCHERIFY_EVENT_ID_METADATA_KEY"),
        ({"VOUCHERIFY_IN_DOUBT_EVENTS": "a=verify"}, "VOUCHERIFY_EVENT_ID_METADATA_KEY"),
        ({"VOUCHERIFY_IN_DOUBT_EVENTS": "order_paid:hold"}, "VOUCHERIFY_IN_DOUBT_EVENTS"),
        ({"VOUCHERIFY_IN_DOUBT_EVENTS": "a=later"}, "VOUCHERIFY_IN_DOUBT_EVENTS"),
        ({"VOUCHERIFY_EVENT_ID_METADATA_KEY": "a b"}, "VOUCHERIFY_EVENT_ID_METADATA_KEY"),
    ],
)
def test_bad_in_doubt_settings_name_their_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)


def test_send_record_round_trips_and_gives_its_evidence():
    record = SendRecord("host:1:abc:9", 1_700_000_000.5, "timed out: ReadTimeout")
    back = SendRecord.decode(record.encode().encode())
    assert back == record
    assert back.evidence() == {"sent_at": "2023-11-14T22:13:20.500Z", "sent_by": "host:1:abc:9",
                               "what": "timed out: ReadTimeout"}
    assert "died" in SendRecord.decode("w|1.0|").what  # no note: nobody recorded anything
