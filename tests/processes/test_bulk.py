"""Bulk backfills: readers (pure), the loader on a real Redis, and the CLI as a user runs it."""

from __future__ import annotations

import base64
import gzip
import io
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from producers import Producer, bulk
from producers.bulk import (
    BulkInputError,
    BulkLoader,
    Progress,
    Rejects,
    Summary,
    derive_event_id,
    open_input,
    parse_header,
    read_csv,
    read_json_array,
    read_ndjson,
    read_records,
)
from voucherify_ingest.errors import InvalidEvent
from voucherify_ingest.lanes import lane_queue
from voucherify_ingest.messages import DELIVER_BATCH, DELIVER_EVENT
from voucherify_ingest.settings import Settings

CLI = [sys.executable, "-m", "voucherify_ingest.cli"]


def event(n: int, **extra) -> dict:
    return {"event": "order_paid", "customer": {"source_id": f"u-{n}"},
            "metadata": {"order": n, "total": 12.5}, **extra}


def write_ndjson(path, records) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return str(path)


def decode(raw: bytes) -> tuple[str, list]:
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return message["headers"]["task"], args


def queued_envelopes(redis_client, queue: str) -> list[dict]:
    """Every envelope on the queue, oldest first, whatever the message kind."""
    envelopes = []
    for raw in reversed(redis_client.lrange(queue, 0, -1)):
        task, args = decode(raw)
        envelopes += args[0] if task == DELIVER_BATCH else [args[0]]
    return envelopes


# -- readers ----------------------------------------------------------------------------------


def test_ndjson_lines_numbers_blank_lines_and_bad_json():
    data = b'{"a": 1}\n\n{"b": 2}\n{not json\n  \n{"c": 3}'
    records = list(read_ndjson(io.BytesIO(data)))
    assert [(r.line, r.data) for r in records if r.error is None] == [
        (1, {"a": 1}), (3, {"b": 2}), (6, {"c": 3})]
    (bad,) = [r for r in records if r.error]
    assert bad.line == 4 and "not valid JSON" in bad.error["_json"][0]
    assert bad.raw.startswith("{not json")


def test_json_array_streams_elements_with_their_starting_line(monkeypatch):
    monkeypatch.setattr(bulk.readers, "_READ_CHARS", 7)  # every element crosses chunk boundaries
    elements = [event(1), {"x": [1, 2, {"y": "z\n"}]}, 12345678, "text", None, event(2)]
    text = json.dumps(elements, indent=2)
    records = list(read_json_array(io.StringIO(text)))
    assert [r.data for r in records] == elements
    # With indent=2, an element starts on a line indented by exactly two spaces.
    starts = [number for number, line in enumerate(text.split("\n"), 1)
              if line.startswith("  ") and not line.startswith("   ")
              and not line.lstrip().startswith(("}", "]"))]
    assert [r.line for r in records] == starts


@pytest.mark.parametrize(("text", "count", "message"), [
    ('[{"a":1},\n{"a":2}\n{"a":3}]', 2, "expected ',' or ']'"),
    ('[{"a":1},\n{"a":2,,}]', 1, "not valid JSON"),
    ('[{"a":1}', 1, "not closed"),
    ('{"a":1}', 0, "not a JSON array"),
    ('[{"a":1}] x', 1, "after the closing"),
    ('[{"a":1},]', 1, "not valid JSON"),
])
def test_json_array_syntax_errors_stop_with_a_line_number(text, count, message):
    records = list(read_json_array(io.StringIO(text)))
    good = [r for r in records if r.error is None]
    assert len(good) == count
    assert records[-1].error is not None and message in records[-1].error["_json"][0]
    assert "rest of the array" in records[-1].error["_json"][0]


def test_json_array_empty_and_whitespace():
    assert list(read_json_array(io.StringIO(" [ \n ] \n"))) == []


def test_csv_dotted_headers_types_and_empty_cells():
    text = (
        "event,customer.source_id,customer.address.city,metadata.total:number,"
        "metadata.count:number,metadata.vip:bool,metadata.tags:json,metadata.note\n"
        'order_paid,u1,Warsaw,12.5,3,yes,"[""a"",1]","multi\nline"\n'
        "order_paid,u2,,,,,,\n"
    )
    records = list(read_csv(io.StringIO(text, newline="")))
    assert records[0].line == 2 and records[1].line == 4  # the quoted cell spans two lines
    assert records[0].data == {
        "event": "order_paid",
        "customer": {"source_id": "u1", "address": {"city": "Warsaw"}},
        "metadata": {"total": 12.5, "count": 3, "vip": True, "tags": ["a", 1],
                     "note": "multi\nline"},
    }
    assert records[1].data == {"event": "order_paid", "customer": {"source_id": "u2"}}


def test_csv_bad_cells_are_field_messages_and_rows_too_long_are_rejected():
    text = "event,metadata.n:number,metadata.ok:bool\na,abc,maybe\nb,nan,true\nc,1,0,extra\n"
    records = list(read_csv(io.StringIO(text, newline="")))
    assert records[0].error == {"metadata.n": ["not a number: 'abc'"],
                                "metadata.ok": ["not a boolean (true/false, yes/no, 1/0): 'maybe'"]}
    assert records[1].error == {"metadata.n": ["not a number: 'nan'"]}
    assert records[2].line == 4 and "4 cells" in records[2].error["_csv"][0]


@pytest.mark.parametrize(("header", "message"), [
    (["event", "metadata.x:money"], "unknown type"),
    (["event", "event"], "both"),
    (["customer", "customer.source_id"], "inside column"),
    (["event", "metadata..x"], "empty name"),
])
def test_csv_header_problems_stop_before_any_record(header, message):
    with pytest.raises(BulkInputError, match=message):
        parse_header(header)


class Bounded(io.RawIOBase):
    """An endless stream of one line repeated that fails if read past ``limit`` bytes."""

    def __init__(self, head: bytes, line: bytes, limit: int):
        self.data = itertools.chain([head], itertools.repeat(line))
        self.pending = b""
        self.served = 0
        self.limit = limit

    def readable(self):
        return True

    def readinto(self, buffer):
        while len(self.pending) < len(buffer):
            self.pending += next(self.data)
        n = len(buffer)
        buffer[:n], self.pending = self.pending[:n], self.pending[n:]
        self.served += n
        assert self.served <= self.limit, "the reader read far ahead: not streaming"
        return n


@pytest.mark.parametrize(("fmt", "head", "line"), [
    ("ndjson", b"", b'{"event":"e","customer":{"id":"c"}}\n'),
    ("json", b"[", b'{"event":"e","customer":{"id":"c"}},\n'),
    ("csv", b"event,customer.id\n", b"e,c\n"),
])
def test_readers_stream_an_endless_input_in_bounded_memory(fmt, head, line):
    raw = Bounded(head, line, limit=4 << 20)
    source = bulk.Input(io.BufferedReader(raw), "endless", head)
    first = list(itertools.islice(read_records(source, fmt), 20_000))
    assert len(first) == 20_000 and all(r.error is None for r in first)
    assert raw.served < 4 << 20


def test_gzip_is_recognised_by_its_magic_not_its_name(tmp_path):
    path = tmp_path / "events.txt"
    path.write_bytes(gzip.compress(b'{"a":1}\n{"a":2}\n'))
    source = open_input(str(path))
    try:
        assert [r.data for r in read_records(source)] == [{"a": 1}, {"a": 2}]
        assert source.position() == source.total_bytes
    finally:
        source.close()


def test_format_is_sniffed_from_content(tmp_path):
    for name, content, expected in [("a", b"\xef\xbb\xbf [1]", [1]),
                                    ("b", b'  {"x":1}\n', [{"x": 1}]),
                                    ("c", b"metadata.x:number\n5\n", [{"metadata": {"x": 5}}])]:
        path = tmp_path / name
        path.write_bytes(content)
        source = open_input(str(path))
        assert [r.data for r in read_records(source)] == expected
        source.close()


# -- event ids --------------------------------------------------------------------------------


def test_derived_ids_are_deterministic_and_content_based():
    a = {"event": "x", "customer": {"source_id": "u", "email": "e"}}
    b = {"customer": {"email": "e", "source_id": "u"}, "event": "x"}  # other key order
    assert derive_event_id(a) == derive_event_id(b)
    assert derive_event_id(a).startswith("bf-") and len(derive_event_id(a)) == 35
    assert derive_event_id(a) != derive_event_id({**a, "event": "y"})


def test_id_field_is_used_as_is_and_must_be_there():
    assert derive_event_id(event(1, metadata={"key": "order-1:paid"}), "metadata.key") == (
        "order-1:paid")
    assert derive_event_id({"metadata": {"key": 42}}, "metadata.key") == "42"
    for bad in ({"metadata": {}}, {"metadata": {"key": ""}}, {"metadata": {"key": True}}):
        with pytest.raises(InvalidEvent) as info:
            derive_event_id(bad, "metadata.key")
        assert "metadata.key" in info.value.messages


# -- the loader on a real Redis ---------------------------------------------------------------


@pytest.fixture
def settings(redis_url, namespace):
    return Settings.from_env({"REDIS_URL": redis_url, "VOUCHERIFY_QUEUE": f"{namespace}-events",
                              "VOUCHERIFY_KEY_PREFIX": namespace})


@pytest.fixture
def producer(settings):
    instance = Producer(settings)
    yield instance
    instance.close()


def load(producer, path, **kwargs) -> Summary:
    source = open_input(str(path))
    try:
        return BulkLoader(producer, **kwargs).run(read_records(source))
    finally:
        source.close()


def test_load_enqueues_valid_records_in_batches_and_rejects_the_rest(
    producer, redis_client, tmp_path
):
    records = [event(n) for n in range(120)]
    records[7] = {"event": "x", "costumer": {"source_id": "u"}}
    records[30] = "{broken"
    path = write_ndjson(tmp_path / "in.ndjson", records)
    rejects = Rejects(str(tmp_path / "rejects.ndjson"))
    summary = load(producer, path, batch_size=50, chunk_size=100, rejects=rejects)
    rejects.close()
    assert (summary.read, summary.enqueued, summary.rejected, summary.duplicates) == (
        120, 118, 2, 0)
    raws = redis_client.lrange(producer.queue, 0, -1)
    assert [decode(r)[0] for r in raws] == [DELIVER_BATCH] * 3  # 50 + 48 (chunk 1) + 20
    envelopes = queued_envelopes(redis_client, producer.queue)
    expected = [r for i, r in enumerate(records) if i not in (7, 30)]
    assert [e["payload"]["customer"]["source_id"] for e in envelopes] == [
        r["customer"]["source_id"] for r in expected]
    assert [e["id"] for e in envelopes] == [derive_event_id(r) for r in expected]
    lines = [json.loads(x) for x in (tmp_path / "rejects.ndjson").read_text().splitlines()]
    assert [x["line"] for x in lines] == [8, 31]
    assert lines[0]["errors"]["costumer"] == ["Unknown field."]
    assert lines[0]["record"] == records[7]
    assert "not valid JSON" in lines[1]["errors"]["_json"][0] and lines[1]["raw"] == "{broken\n"


def test_batch_size_one_writes_one_message_per_event(producer, redis_client, tmp_path):
    path = write_ndjson(tmp_path / "in.ndjson", [event(n) for n in range(5)])
    load(producer, path, batch_size=1)
    raws = redis_client.lrange(producer.queue, 0, -1)
    assert [decode(r)[0] for r in raws] == [DELIVER_EVENT] * 5


def test_rerun_skips_ids_the_ledger_has_and_repeats_in_a_chunk(producer, redis_client, tmp_path):
    records = [event(n) for n in range(10)] + [event(3)]
    path = write_ndjson(tmp_path / "in.ndjson", records)
    first = load(producer, path)
    assert (first.enqueued, first.duplicates) == (10, 1)
    ids = [e["id"] for e in queued_envelopes(redis_client, producer.queue)]
    redis_client.delete(producer.queue)
    for event_id in ids[:6]:  # what the workers delivered meanwhile
        redis_client.set(f"{producer.settings.key_prefix}:delivered:{event_id}", 1)
    second = load(producer, path)
    assert (second.read, second.enqueued, second.duplicates) == (11, 4, 7)
    assert [e["id"] for e in queued_envelopes(redis_client, producer.queue)] == ids[6:]
    third = load(producer, path, check_ledger=False)  # the worker's ledger stops these
    assert third.enqueued == 10


def test_id_field_and_wrapped_dead_letter_records(producer, redis_client, tmp_path):
    records = [
        event(1, metadata={"key": "k-1"}),
        {"event_id": "evt-from-dlq", "payload": event(2), "dead_letter": {"reason": "auth"}},
        {"payload": event(3, metadata={"key": "k-3"})},
        event(4),  # no key: rejected, since --id-field was asked for
        {"event_id": "bad id!", "payload": event(5)},
    ]
    path = write_ndjson(tmp_path / "in.ndjson", records)
    summary = load(producer, path, id_field="metadata.key", rejects=Rejects(None))
    assert (summary.enqueued, summary.rejected) == (3, 2)
    envelopes = queued_envelopes(redis_client, producer.queue)
    assert [e["id"] for e in envelopes] == ["k-1", "evt-from-dlq", "k-3"]
    assert envelopes[1]["payload"] == event(2)


def test_dry_run_validates_and_touches_no_redis(producer, redis_client, tmp_path):
    path = write_ndjson(tmp_path / "in.ndjson", [event(1), event(2), {"event": "x"}])
    summary = load(producer, path, dry_run=True, rejects=Rejects(None))
    assert (summary.read, summary.enqueued, summary.rejected) == (3, 2, 1)
    assert redis_client.llen(producer.queue) == 0
    assert not list(redis_client.scan_iter(match=f"{producer.settings.key_prefix}*"))


def test_max_queue_pauses_until_the_workers_catch_up(producer, redis_client, tmp_path):
    redis_client.lpush(producer.queue, *[b"x"] * 30)  # 30 messages x batch 10 = 300 events
    path = write_ndjson(tmp_path / "in.ndjson", [event(n) for n in range(40)])
    loader = BulkLoader(producer, batch_size=10, chunk_size=20, max_queue=100,
                        pause_poll_s=0.05)
    source = open_input(path)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (loader.run(read_records(source)), done.set()))
    thread.start()
    try:
        time.sleep(1.0)
        assert not done.is_set(), "the loader did not wait for room"
        assert redis_client.llen(producer.queue) == 30, "it pushed while the queue was full"
        redis_client.ltrim(producer.queue, 0, 4)  # the workers drained the queue to 5 messages
        assert done.wait(10)
    finally:
        redis_client.delete(producer.queue)
        thread.join(10)
        source.close()
    assert loader.summary.enqueued == 40 and loader.summary.paused_s >= 0.9


# -- progress ---------------------------------------------------------------------------------


def test_progress_bar_on_a_tty_and_plain_lines_otherwise(tmp_path):
    path = write_ndjson(tmp_path / "in.ndjson", [event(n) for n in range(100)])
    source = open_input(path)
    list(itertools.islice(read_records(source), 50))
    summary = Summary(read=50, enqueued=48, rejected=2)
    tty = io.StringIO()
    Progress(tty, source, tty=True).update(summary, force=True)
    assert tty.getvalue().startswith("\r") and "[#" in tty.getvalue()
    assert "ETA" in tty.getvalue() and "/s" in tty.getvalue()
    plain = io.StringIO()
    Progress(plain, source, tty=False).update(summary, force=True)
    assert plain.getvalue().startswith("progress: ") and plain.getvalue().endswith("\n")
    assert "\r" not in plain.getvalue() and "48 enqueued" in plain.getvalue()
    source.close()


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def env(settings):
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REDIS_URL": settings.redis_url,
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),  # this checkout's code
            "VOUCHERIFY_QUEUE": settings.queue, "VOUCHERIFY_KEY_PREFIX": settings.key_prefix,
            "VOUCHERIFY_LOG_FORMAT": "json"}


def run(args, env, *, cwd, stdin=None, timeout=60):
    return subprocess.run(CLI + args, env=env, input=stdin, capture_output=True, cwd=cwd,
                          timeout=timeout)


def test_cli_file_summary_rejects_and_exit_codes(env, tmp_path, redis_client, settings):
    good = write_ndjson(tmp_path / "good.ndjson", [event(n) for n in range(3)])
    result = run(["enqueue", "--file", good], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"read 3, enqueued 3, rejected 0, duplicates 0" in result.stdout
    bad = write_ndjson(tmp_path / "mixed.ndjson", [event(9), {"event": "x", "customer": {}}])
    result = run(["enqueue", "--file", bad], env, cwd=tmp_path)
    assert result.returncode == 3
    assert b"read 2, enqueued 1, rejected 1" in result.stdout
    assert b"line 2: customer: must carry a non-empty id or source_id" in result.stderr
    rejects = json.loads((tmp_path / "mixed.rejects.ndjson").read_text())
    assert rejects["line"] == 2
    # one batch message per run, on the bulk lane (the default for --file)
    assert redis_client.llen(lane_queue(settings.queue, "bulk")) == 2
    assert redis_client.llen(settings.queue) == 0


def test_cli_reads_gzipped_csv_from_stdin(env, tmp_path, redis_client, settings):
    csv_text = "event,customer.source_id,metadata.total:number\nsigned_up,u1,5\nsigned_up,u2,\n"
    result = run(["enqueue", "--file", "-", "--batch-size", "1"], env, cwd=tmp_path,
                 stdin=gzip.compress(csv_text.encode()))
    assert result.returncode == 0, result.stderr
    envelopes = queued_envelopes(redis_client, lane_queue(settings.queue, "bulk"))
    assert {e.get("lane") for e in envelopes} == {"bulk"}
    assert [e["payload"] for e in envelopes] == [
        {"event": "signed_up", "customer": {"source_id": "u1"}, "metadata": {"total": 5}},
        {"event": "signed_up", "customer": {"source_id": "u2"}}]


def test_cli_dry_run_and_plain_progress_lines(env, tmp_path, redis_client, settings):
    # Enough records to outlast a 0.1 s progress interval at >500k records/s.
    path = write_ndjson(tmp_path / "big.ndjson", [event(n) for n in range(60_000)])
    result = run(["enqueue", "--file", path, "--dry-run", "--progress-every", "0.1"], env,
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"valid (dry run, nothing enqueued) 60000" in result.stdout
    assert b"progress: " in result.stderr
    assert redis_client.llen(settings.queue) == 0
    assert redis_client.llen(lane_queue(settings.queue, "bulk")) == 0


def test_cli_usage_errors_and_redis_down(env, tmp_path):
    path = write_ndjson(tmp_path / "in.ndjson", [event(1)])
    both = run(["enqueue", "--file", path, '{"event":"x"}'], env, cwd=tmp_path)
    assert both.returncode == 2 and b"--file takes no PAYLOAD_JSON" in both.stderr
    missing = run(["enqueue", "--file", str(tmp_path / "nope.ndjson")], env, cwd=tmp_path)
    assert missing.returncode == 1 and b"cannot read" in missing.stderr
    down = run(["enqueue", "--file", path], {**env, "REDIS_URL": "redis://:pw-s3cret@127.0.0.1:1/0",
                                             "VOUCHERIFY_REDIS_TIMEOUT_S": "0.5"}, cwd=tmp_path)
    assert down.returncode == 1
    assert b"did not answer" in down.stderr
    assert b"pw-s3cret" not in down.stdout + down.stderr and b"Traceback" not in down.stderr
