"""The dead-letter queue on a real Redis: layout, listing, filters, stats, replay, purge,
retention, export, and the `voucherify-ingest dlq` commands (click's runner, real Redis)."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from structlog.testing import capture_logs

from voucherify_ingest.cli import main as cli_main
from voucherify_ingest.deadletters import REASONS, DeadLetterQueue, Retention, make_entry
from voucherify_ingest.keys import Keys
from voucherify_ingest.messages import DELIVER_EVENT

T0 = 1_700_000_000.0


def _payload(n: int, event: str = "order_paid") -> dict:
    return {"event": event, "customer": {"source_id": f"user-{n}"}, "metadata": {"n": n}}


def _entry(n: int, *, reason="retries_exhausted", status=503, event="order_paid", at=None,
           attempts=3):
    return make_entry(
        event_id=f"ev-{n:05d}", payload=_payload(n, event), reason=reason,
        error={"status": status, "message": f"HTTP {status}", "key": "k", "request_id": f"r{n}"},
        attempts=attempts, enqueued_at="2023-11-14T22:00:00.000Z",
        now_s=T0 + n if at is None else at,
    )


@pytest.fixture
def keys(namespace) -> Keys:
    return Keys(prefix=namespace, queue=f"{namespace}-events")


@pytest.fixture
def dlq(redis_client, keys) -> DeadLetterQueue:
    return DeadLetterQueue(redis_client, keys)


def _seed(dlq: DeadLetterQueue, entries) -> list[dict]:
    entries = list(entries)
    with dlq.redis.pipeline(transaction=False) as pipe:
        for entry in entries:
            dlq.add(entry, pipe)
        pipe.execute()
    return entries


def _queued(redis_client, keys) -> list[dict]:
    """Decode the Celery messages on the ingest queue, in consumption order (RPOP end first)."""
    raw = redis_client.lrange(keys.queue, 0, -1)
    out = []
    for item in reversed(raw):
        message = json.loads(item)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append({"task": message["headers"]["task"], "task_id": message["headers"]["id"],
                    "envelope": args[0]})
    return out


def _ids(entries) -> list[str]:
    return [e["id"] for e in entries]


# -- storage -----------------------------------------------------------------------------------


def test_add_in_a_transaction_keeps_hash_index_reasons_and_counts_in_step(dlq, redis_client, keys):
    with redis_client.pipeline(transaction=True) as pipe:  # how delivery.py stores an outcome
        dlq.add(_entry(1, reason="rejected", status=400), pipe)
        pipe.hincrby(f"{keys.prefix}:other", "x", 1)
        pipe.execute()
    assert dlq.get("ev-00001")["reason"] == "rejected"
    # The same event fails again for another reason: one entry, moved to the new reason's set.
    dlq.add(_entry(1, reason="retries_exhausted", status=503, at=T0 + 50))
    assert redis_client.hlen(keys.dlq_entries) == 1
    assert redis_client.zscore(keys.dlq_index, "ev-00001") == T0 + 50
    assert redis_client.zcard(keys.dlq_reason("rejected")) == 0
    assert redis_client.zcard(keys.dlq_reason("retries_exhausted")) == 1
    stats = dlq.stats(now_s=T0 + 60)
    assert stats["by_status"] == {"503": 1}
    assert stats["by_reason_status"] == {"retries_exhausted": {"503": 1}}
    assert stats["counts_exact"] is True


def test_entry_keeps_everything_the_issue_lists(dlq):
    dlq.add(_entry(7, reason="rejected", status=422))
    entry = dlq.get("ev-00007")
    assert entry["payload"] == _payload(7)
    assert entry["status"] == 422 and entry["reason"] == "rejected" and entry["attempts"] == 3
    assert entry["error"]["request_id"] == "r7" and entry["error"]["key"] == "k"
    assert entry["first_enqueued_at"] == "2023-11-14T22:00:00.000Z"
    assert entry["last_failed_at"].endswith("Z") and entry["worker_host"]


# -- listing -----------------------------------------------------------------------------------


def test_list_is_newest_first_and_pages_through_ties_without_skips_or_repeats(dlq):
    # 40 entries share one timestamp (a burst within a millisecond), 20 more are spread out.
    _seed(dlq, [_entry(n, at=T0) for n in range(40)] + [_entry(n) for n in range(40, 60)])
    seen, cursor, pages = [], None, 0
    while True:
        page = dlq.list(limit=7, cursor=cursor)
        seen += [(e["last_failed_ts"], e["id"]) for e in page.entries]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == 60 and len(set(seen)) == 60, "a page skipped or repeated an entry"
    assert [ts for ts, _ in seen] == sorted((ts for ts, _ in seen), reverse=True)
    assert seen[0][1] == "ev-00059"
    assert pages == 9


def test_filters_reason_status_event_since_until(dlq):
    _seed(dlq, [_entry(n, reason="rejected", status=400, event="signed_up") for n in range(0, 10)])
    _seed(dlq, [_entry(n, reason="retries_exhausted", status=503) for n in range(10, 20)])
    _seed(dlq, [_entry(n, reason="retries_exhausted", status=None) for n in range(20, 25)])
    _seed(dlq, [_entry(n, reason="invalid", status=None) for n in range(25, 27)])

    def ids(**filters):
        return _ids(dlq.list(limit=100, **filters).entries)

    assert ids(reason="rejected") == [f"ev-{n:05d}" for n in range(9, -1, -1)]
    assert ids(status=503) == [f"ev-{n:05d}" for n in range(19, 9, -1)]
    assert ids(status="none", reason="retries_exhausted") == [f"ev-{n:05d}" for n in
                                                              range(24, 19, -1)]
    assert ids(event="signed_up") == [f"ev-{n:05d}" for n in range(9, -1, -1)]
    assert _ids(dlq.list(limit=3, event="signed_up").entries) == ["ev-00009", "ev-00008",
                                                                 "ev-00007"]
    assert ids(since=T0 + 5, until=T0 + 12) == [f"ev-{n:05d}" for n in range(12, 4, -1)]
    assert ids(reason="rejected", since=T0 + 8) == ["ev-00009", "ev-00008"]
    assert ids(status=404) == []
    assert dlq.list(limit=100, status=404).scanned == 0, "counts say no 404s: nothing to scan"
    assert _ids(dlq.list(limit=2, status=503).entries) == ["ev-00019", "ev-00018"]
    with pytest.raises(ValueError):
        dlq.list(reason="bogus")


def test_status_filter_walks_pages_to_find_rare_matches_deep_in_the_index(dlq):
    _seed(dlq, [_entry(n, reason="rejected", status=404) for n in range(3)])  # the oldest
    _seed(dlq, [_entry(n) for n in range(3, 1300)])
    page = dlq.list(limit=10, status=404)
    assert _ids(page.entries) == ["ev-00002", "ev-00001", "ev-00000"]
    assert page.next_cursor is None
    assert dlq.matching(status=404) == 3


def test_list_at_scale_reads_one_page_not_the_hash(dlq, redis_client, keys):
    _seed(dlq, [_entry(n) for n in range(20_000)])
    before = redis_client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0)
    started = time.perf_counter()
    page = dlq.list(limit=50)
    elapsed = time.perf_counter() - started
    calls = redis_client.info("commandstats")["cmdstat_hmget"]["calls"] - before
    assert len(page.entries) == 50 and page.scanned == 50 and calls == 1
    assert elapsed < 1.0  # generous; the benchmark measures the real figure


# -- stats -------------------------------------------------------------------------------------


def test_stats_counts_by_reason_and_status_and_oldest_age(dlq, redis_client):
    _seed(dlq, [_entry(n, reason="rejected", status=400) for n in range(4)])
    _seed(dlq, [_entry(n, reason="quota_exhausted", status=402) for n in range(4, 6)])
    _seed(dlq, [_entry(n, reason="invalid", status=None) for n in range(6, 7)])
    stats = dlq.stats(now_s=T0 + 100)
    assert stats["total"] == 7
    assert stats["by_reason"] == {"invalid": 1, "rejected": 4, "retries_exhausted": 0,
                                  "quota_exhausted": 2, "auth": 0, "internal": 0,
                                  "in_doubt": 0}
    assert stats["by_status"] == {"400": 4, "402": 2, "none": 1}
    assert stats["oldest"] == {"id": "ev-00000", "last_failed_at": "2023-11-14T22:13:20.000Z",
                               "age_s": 100.0}
    assert stats["newest"]["id"] == "ev-00006"
    assert stats["counts_exact"] is True
    redis_client.hdel(dlq.counts_key, "rejected|400")  # drift (e.g. a hand-edited key)
    assert dlq.stats()["counts_exact"] is False
    dlq.recount()
    assert dlq.stats()["by_status"] == {"400": 4, "402": 2, "none": 1}
    assert dlq.stats()["counts_exact"] is True


# -- replay ------------------------------------------------------------------------------------


def test_replay_enqueues_original_id_and_payload_with_attempts_reset(dlq, redis_client, keys):
    _seed(dlq, [_entry(n, attempts=9) for n in range(5)])
    result = dlq.replay()
    assert (result.matched, result.replayed, result.gone) == (5, 5, 0)
    queued = _queued(redis_client, keys)
    assert [q["envelope"]["id"] for q in queued] == [f"ev-{n:05d}" for n in range(5)]  # oldest 1st
    for n, q in enumerate(queued):
        assert q["task"] == DELIVER_EVENT and q["task_id"] == f"ev-{n:05d}"
        assert q["envelope"]["attempt"] == 0
        assert q["envelope"]["payload"] == _payload(n)
        assert q["envelope"]["enqueued_at"] == "2023-11-14T22:00:00.000Z"
    assert dlq.count() == 0 and redis_client.hlen(keys.dlq_entries) == 0
    assert redis_client.zcard(keys.dlq_reason("retries_exhausted")) == 0
    assert dlq.stats()["by_status"] == {} and dlq.stats()["counts_exact"]


def test_replay_filters_limit_dry_run_and_invalid_entries(dlq, redis_client, keys):
    _seed(dlq, [_entry(n) for n in range(6)])
    _seed(dlq, [_entry(n, reason="rejected", status=400) for n in range(6, 9)])
    _seed(dlq, [_entry(n, reason="invalid", status=None) for n in range(9, 11)])
    dry = dlq.replay(dry_run=True)
    assert dry.matched == 9 and dry.replayed == 0 and redis_client.llen(keys.queue) == 0
    assert "ev-00009" not in dry.sample_ids, "invalid entries replay only when asked for"
    assert dlq.replay(reason="retries_exhausted", limit=2).replayed == 2
    assert [q["envelope"]["id"] for q in _queued(redis_client, keys)] == ["ev-00000", "ev-00001"]
    assert dlq.replay(status=400).replayed == 3
    assert dlq.replay().replayed == 4
    assert _ids(dlq.list(limit=10).entries) == ["ev-00010", "ev-00009"]
    assert dlq.replay(reason="invalid").replayed == 2
    assert dlq.count() == 0 and redis_client.llen(keys.queue) == 11


def test_replay_by_id_and_entries_failing_again_during_a_replay_wait(dlq, redis_client, keys):
    _seed(dlq, [_entry(n) for n in range(4)])
    assert dlq.replay(ids=["ev-00002", "missing"]).replayed == 1
    late = time.time() + 60  # an entry dead-lettered after the replay began
    dlq.add(_entry(99, at=late))
    assert dlq.replay().replayed == 3
    assert _ids(dlq.list().entries) == ["ev-00099"]


def test_an_entry_stamped_in_the_millisecond_of_a_replay_is_replayed(dlq):
    """A replay takes what failed up to its start. An entry written in the same millisecond
    (0.6 ms into it) was stamped 0.4 ms after that start when stamps were rounded to the nearest
    millisecond, and was left behind: one CI run's replay right after an add moved nothing."""
    moment = 1_800_000_000.0006
    dlq.add(make_entry(event_id="ev-same-ms", payload={"event": "e"}, reason="rejected",
                       error={"message": "no"}, attempts=1, now_s=moment))
    assert dlq.replay(until=moment).replayed == 1
    assert dlq.count() == 0


def test_two_replays_at_once_never_enqueue_one_entry_twice(redis_server, dlq, redis_client, keys):
    _seed(dlq, [_entry(n, at=T0 + n // 10) for n in range(3000)])  # ties, too
    results, errors = [], []

    def run():
        client = redis_server.client()
        try:
            results.append(DeadLetterQueue(client, keys).replay(chunk_size=7))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    queued = [q["envelope"]["id"] for q in _queued(redis_client, keys)]
    assert len(queued) == 3000 and len(set(queued)) == 3000
    assert sum(r.replayed for r in results) == 3000
    assert dlq.count() == 0


def test_an_entry_taken_between_read_and_move_is_not_enqueued(dlq, redis_client, keys):
    """The replay script re-checks each entry: gone (purged, replayed) means not pushed."""
    _seed(dlq, [_entry(n) for n in range(3)])
    original, other = dlq._load, DeadLetterQueue(redis_client, keys)

    def load_then_purge(ids):  # only injects the interleaving; assertions are on Redis
        entries = original(ids)
        other.purge(ids=["ev-00001"])  # another operator, between our read and our move
        return entries

    dlq._load = load_then_purge
    result = dlq.replay()
    assert (result.replayed, result.gone) == (2, 1)
    assert [q["envelope"]["id"] for q in _queued(redis_client, keys)] == ["ev-00000", "ev-00002"]


# -- purge and retention -----------------------------------------------------------------------


def test_purge_with_filters_keeps_the_rest_and_the_counts(dlq):
    _seed(dlq, [_entry(n) for n in range(5)])
    _seed(dlq, [_entry(n, reason="rejected", status=400) for n in range(5, 8)])
    assert dlq.purge(status=400) == 3
    assert dlq.purge(until=T0 + 1) == 2
    assert _ids(dlq.list().entries) == ["ev-00004", "ev-00003", "ev-00002"]
    stats = dlq.stats()
    assert stats["by_status"] == {"503": 3} and stats["counts_exact"]


def test_trim_by_age_and_length_drops_the_oldest(dlq):
    _seed(dlq, [_entry(n) for n in range(100)])
    assert dlq.trim(max_age_s=50, now_s=T0 + 80) == {"by_age": 30, "by_len": 0}
    assert dlq.trim(max_len=20) == {"by_age": 0, "by_len": 50}
    assert _ids(dlq.list(limit=100).entries) == [f"ev-{n:05d}" for n in range(99, 79, -1)]
    assert dlq.trim() == {"by_age": 0, "by_len": 0}, "0 = keep everything"
    assert dlq.stats()["counts_exact"]


def test_retention_logs_how_many_it_dropped_and_runs_at_most_every_interval(dlq):
    _seed(dlq, [_entry(n) for n in range(30)])
    retention = Retention(dlq, max_age_s=0, max_len=12, every_s=3600)
    with capture_logs() as logs:
        assert retention.maybe_run() == 18
        dlq.add(_entry(500))
        assert retention.maybe_run() == 0  # not due yet
    trimmed = [entry for entry in logs if entry["event"] == "dlq_trimmed"]
    assert len(trimmed) == 1 and trimmed[0]["dropped"] == 18 and trimmed[0]["by_len"] == 18
    assert dlq.count() == 13


def test_retention_is_off_by_default(redis_client, pipeline_settings):
    assert Retention.from_settings(redis_client, pipeline_settings) is None


# -- export ------------------------------------------------------------------------------------


def test_export_writes_ndjson_the_bulk_loader_takes_back(dlq):
    _seed(dlq, [_entry(n) for n in range(3)])
    _seed(dlq, [_entry(n, reason="rejected", status=400) for n in range(3, 5)])
    out = io.StringIO()
    assert dlq.export(out, reason="rejected") == 2
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event_id"] for r in lines] == ["ev-00003", "ev-00004"]
    record = lines[0]
    assert set(record) == {"event_id", "payload", "dead_letter"} and "event" not in record
    assert record["payload"] == _payload(3)
    assert record["dead_letter"]["reason"] == "rejected"
    assert record["dead_letter"]["status"] == 400
    assert record["dead_letter"]["error"]["request_id"] == "r3"
    assert record["dead_letter"]["attempts"] == 3
    assert record["dead_letter"]["last_failed_at"] == "2023-11-14T22:13:23.000Z"
    assert dlq.count() == 5, "export deletes nothing"


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli(redis_url, keys):
    env = {"REDIS_URL": redis_url, "VOUCHERIFY_KEY_PREFIX": keys.prefix,
           "VOUCHERIFY_QUEUE": keys.queue, "VOUCHERIFY_LOG_FORMAT": "json"}

    def run(*args, input=None):
        return CliRunner().invoke(cli_main, ["dlq", *args], env=env, input=input,
                                  catch_exceptions=False)

    return run


def test_cli_list_and_show_json_shapes_and_tables(cli, dlq):
    _seed(dlq, [_entry(n) for n in range(3)])
    result = cli("list", "--json", "--limit", "2")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"entries", "count", "next_cursor", "scanned", "filters"}
    assert data["count"] == 2 and data["next_cursor"]
    assert [e["id"] for e in data["entries"]] == ["ev-00002", "ev-00001"]
    assert "payload" not in data["entries"][0]
    assert {"id", "event", "reason", "status", "error", "attempts", "first_enqueued_at",
            "last_failed_at", "worker_host"} <= set(data["entries"][0])
    more = json.loads(cli("list", "--json", "--cursor", data["next_cursor"]).stdout)
    assert [e["id"] for e in more["entries"]] == ["ev-00000"] and more["next_cursor"] is None
    with_payload = json.loads(cli("list", "--json", "--with-payload").stdout)
    assert with_payload["entries"][0]["payload"] == _payload(2)

    table = cli("list", "--reason", "retries_exhausted", "--status", "503").stdout
    assert table.splitlines()[0].split() == ["LAST", "FAILED", "ID", "EVENT", "REASON", "STATUS",
                                             "ATTEMPTS", "ERROR"]
    assert "ev-00002" in table and "3 shown, newest first" in table

    shown = json.loads(cli("show", "ev-00001", "--json").stdout)
    assert shown == dlq.get("ev-00001")
    pretty = cli("show", "ev-00001").stdout
    assert "reason:" in pretty and "retries_exhausted" in pretty
    assert '"source_id": "user-1"' in pretty
    missing = cli("show", "nope")
    assert missing.exit_code == 1 and "no dead letter" in missing.stderr


def test_cli_rejects_bad_filters(cli):
    assert cli("list", "--status", "abc").exit_code == 2
    assert cli("list", "--reason", "nope").exit_code == 2
    assert cli("list", "--since", "yesterday-ish").exit_code == 2
    assert cli("list", "--cursor", "garbage").exit_code == 2


def test_cli_relative_and_iso_times(cli, dlq):
    now = time.time()
    dlq.add(_entry(1, at=now - 3 * 3600))
    dlq.add(_entry(2, at=now - 60))
    recent = json.loads(cli("list", "--json", "--since", "2h").stdout)
    assert [e["id"] for e in recent["entries"]] == ["ev-00002"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600))
    older = json.loads(cli("list", "--json", "--until", iso).stdout)
    assert [e["id"] for e in older["entries"]] == ["ev-00001"]


def test_cli_stats_json_shape(cli, dlq):
    _seed(dlq, [_entry(n) for n in range(3)] + [_entry(3, reason="auth", status=401)])
    data = json.loads(cli("stats", "--json").stdout)
    assert set(data) == {"total", "by_reason", "by_status", "by_reason_status", "oldest",
                         "newest", "counts_exact", "retention", "in_doubt"}
    assert data["total"] == 4 and data["by_reason"]["auth"] == 1
    assert set(data["by_reason"]) == set(REASONS)
    assert data["by_status"] == {"401": 1, "503": 3}
    assert data["oldest"]["id"] == "ev-00000" and data["oldest"]["age_s"] > 0
    assert data["retention"] == {"max_age_s": 0, "max_len": 0}
    table = cli("stats").stdout
    assert "dead letters: 4" in table and "retries_exhausted  3" in table


def test_cli_export_replay_json_shapes(cli, dlq, redis_client, keys, tmp_path):
    _seed(dlq, [_entry(n) for n in range(4)])
    target = tmp_path / "dead.ndjson"
    exported = json.loads(cli("export", str(target), "--json").stdout)
    assert exported == {"exported": 4, "file": str(target), "filters": {}}
    assert len(target.read_text().splitlines()) == 4
    dry = json.loads(cli("replay", "--dry-run", "--json").stdout)
    assert dry["dry_run"] is True and dry["matched"] == 4 and dry["replayed"] == 0
    assert dry["sample_ids"] == [f"ev-{n:05d}" for n in range(4)]
    done = cli("replay", "--json", "--id", "ev-00001", "--id", "ev-00003")
    data = json.loads(done.stdout)
    assert {k: data[k] for k in ("dry_run", "matched", "replayed", "gone", "queue", "lane")} == {
        "dry_run": False, "matched": 2, "replayed": 2, "gone": 0,
        "queue": keys.lane_queue("bulk"), "lane": "bulk"}  # a replay is a backlog: bulk lane
    assert redis_client.llen(keys.lane_queue("bulk")) == 2 and redis_client.llen(keys.queue) == 0
    text = cli("replay").stdout
    assert "replayed 2 dead letter(s)" in text and dlq.count() == 0


def test_cli_purge_asks_first_and_no_means_nothing_is_deleted(cli, dlq):
    _seed(dlq, [_entry(n) for n in range(5)])
    refused = cli("purge", "--status", "503", input="n\n")
    assert refused.exit_code == 1 and "Delete 5 dead letter(s)" in refused.stderr
    assert dlq.count() == 5
    no_input = cli("purge")  # not a TTY, nothing typed: aborts, deletes nothing
    assert no_input.exit_code == 1 and dlq.count() == 5
    accepted = cli("purge", "--limit", "2", input="y\n")
    assert accepted.exit_code == 0 and "deleted 2" in accepted.stdout
    assert _ids(dlq.list().entries) == ["ev-00004", "ev-00003", "ev-00002"]
    dry = json.loads(cli("purge", "--dry-run", "--json").stdout)
    assert dry["dry_run"] is True and dry["matched"] == 3 and dlq.count() == 3
    data = json.loads(cli("purge", "--yes", "--json").stdout)
    assert data["purged"] == 3 and data["matched"] == 3 and dlq.count() == 0


def test_cli_says_redis_is_down_in_one_line_without_the_password(keys):
    env = {"REDIS_URL": "redis://:hunter2secret@127.0.0.1:1/0",
           "VOUCHERIFY_KEY_PREFIX": keys.prefix, "VOUCHERIFY_REDIS_TIMEOUT_S": "0.5"}
    result = CliRunner().invoke(cli_main, ["dlq", "stats"], env=env)
    assert result.exit_code == 1
    assert "did not answer" in result.stderr and "hunter2secret" not in result.output


def test_an_entry_failing_again_between_read_and_move_stays_for_next_time(dlq, redis_client,
                                                                         keys):
    _seed(dlq, [_entry(n) for n in range(3)])
    original, worker = dlq._load, DeadLetterQueue(redis_client, keys)

    def load_then_fail_again(ids):  # a worker dead-letters ev-00001 again meanwhile
        entries = original(ids)
        worker.add(_entry(1, at=time.time() + 30, attempts=5))
        return entries

    dlq._load = load_then_fail_again
    assert dlq.replay(chunk_size=10).replayed == 2
    assert [q["envelope"]["id"] for q in _queued(redis_client, keys)] == ["ev-00000", "ev-00002"]
    assert dlq.get("ev-00001")["attempts"] == 5 and dlq.count() == 1


def test_index_members_left_without_an_entry_are_cleared_not_looped_over(dlq, redis_client, keys):
    _seed(dlq, [_entry(n) for n in range(5)])
    redis_client.zadd(keys.dlq_index, {f"ghost-{n}": T0 + 2.5 for n in range(600)})
    assert _ids(dlq.list(limit=10).entries) == [f"ev-{n:05d}" for n in range(4, -1, -1)]
    assert dlq.count() == 5, "the ghosts were cleared from the index"
    redis_client.zadd(keys.dlq_index, {f"ghost-{n}": T0 - 5 for n in range(10)})
    assert dlq.trim(max_len=3) == {"by_age": 0, "by_len": 2}
    assert dlq.count() == 3


def test_counts_stay_exact_for_odd_entries_and_event_names_that_look_like_fields(dlq):
    sly = _entry(1, reason="rejected", status=400, event='x","reason":"auth","status":401,')
    reordered = {k: v for k, v in reversed(list(_entry(2, status=None).items()))}
    texty = {**_entry(3), "status": "503"}
    for entry in (sly, reordered, texty):
        dlq.add(entry)
        dlq.add(entry)  # overwriting must not count twice
    assert dlq.stats()["by_reason_status"] == {"rejected": {"400": 1},
                                               "retries_exhausted": {"none": 1, "503": 1}}
    assert dlq.purge(reason="rejected") == 1
    assert dlq.purge() == 2
    stats = dlq.stats()
    assert stats["by_reason_status"] == {} and stats["counts_exact"] and stats["total"] == 0


def test_replay_shows_a_progress_bar_on_a_tty_only(dlq, redis_url, keys):
    """Run the real command on a pseudo-terminal, then with pipes."""
    _seed(dlq, [_entry(n) for n in range(40)])
    env = {**os.environ, "REDIS_URL": redis_url, "VOUCHERIFY_KEY_PREFIX": keys.prefix,
           "VOUCHERIFY_QUEUE": keys.queue, "VOUCHERIFY_LOG_FORMAT": "json"}
    argv = [sys.executable, "-m", "voucherify_ingest.cli", "dlq", "replay", "--chunk-size", "10",
            "--limit", "20"]
    leader, follower = os.openpty()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=follower,
                            stderr=follower, start_new_session=True)
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the terminal closed: the command is done
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        os.close(leader)
    text = seen.decode(errors="replace")
    assert "replaying" in text and "20/20" in text, text  # the bar, with its position
    assert "replayed 20 dead letter(s)" in text
    piped = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert piped.returncode == 0 and "replaying" not in piped.stderr + piped.stdout
    assert dlq.count() == 0
