"""Pure pieces behind the first-hour messages (issue 18): formatting, roles, delays."""

from __future__ import annotations

import itertools

import pytest

from voucherify_ingest.cli.redis_wait import retry_delays
from voucherify_ingest.errors import ConfigError, InvalidEvent, format_messages
from voucherify_ingest.settings import Settings


def test_internal_keys_are_not_shown_but_field_paths_are():
    assert format_messages({"_schema": ["event payload must be a JSON object"]}) == \
        "event payload must be a JSON object"
    assert format_messages({"customer": {"_schema": ["must carry id or source_id"]},
                            "costumer": ["Unknown field."]}) == \
        "customer: must carry id or source_id; costumer: Unknown field."
    assert format_messages({"3": {"_json": ["not valid JSON"]}}) == "3: not valid JSON"
    error = InvalidEvent({"_schema": ["event payload must be a JSON object"]})
    assert error.messages == {"_schema": ["event payload must be a JSON object"]}  # unchanged
    assert str(error) == "invalid event: event payload must be a JSON object"


BAD_WORKER_SETTINGS = {"VOUCHERIFY_RATE_LIMIT": "lots", "VOUCHERIFY_BACKOFF_MAX_S": "soon",
                       "VOUCHERIFY_WORKER_POOL": "gevent", "VOUCHERIFY_API_URL": "nope"}


@pytest.mark.parametrize("role", ["producer", "serve"])
def test_producers_and_serve_ignore_the_workers_settings(role):
    settings = Settings.from_env(BAD_WORKER_SETTINGS, role=role)
    assert settings.rate_limit == "lots"  # kept as given (stats shows it); never parsed here
    assert settings.backoff_max_s == Settings().backoff_max_s


@pytest.mark.parametrize("name", sorted(BAD_WORKER_SETTINGS))
def test_the_worker_role_refuses_each_bad_worker_setting_by_name(name):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: BAD_WORKER_SETTINGS[name]})


def test_every_role_refuses_what_it_uses():
    for role in ("worker", "producer", "serve"):
        with pytest.raises(ConfigError, match="REDIS_URL"):
            Settings.from_env({"REDIS_URL": "http://x"}, role=role)
        with pytest.raises(ConfigError, match="VOUCHERIFY_LOG_LEVEL"):
            Settings.from_env({"VOUCHERIFY_LOG_LEVEL": "loud"}, role=role)
        with pytest.raises(ConfigError, match="VOUCHERIFY_MAX_PAYLOAD_BYTES"):
            Settings.from_env({"VOUCHERIFY_MAX_PAYLOAD_BYTES": "big"}, role=role)


@pytest.mark.parametrize(("url", "in_clear"), [
    ("https://api.voucherify.io", False), ("http://api.voucherify.io", True),
    ("http://127.0.0.1:8080", False), ("http://localhost", False), ("http://[::1]:9", False),
    ("http://10.0.0.7", True),
])
def test_api_in_clear_means_http_to_another_machine(url, in_clear):
    assert Settings(api_url=url).api_in_clear is in_clear


def test_redis_retry_delays_double_up_to_a_cap():
    assert list(itertools.islice(retry_delays(), 8)) == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_refused_password_reads_differently_from_a_silent_redis():
    import redis

    from voucherify_ingest.redis_conn import credentials_refused, describe_redis_failure

    url = "redis://:hunter2@redis.internal:6379/0"
    wrong = redis.AuthenticationError("invalid username-password pair or user is disabled.")
    down = redis.ConnectionError("Error 111 connecting to redis.internal:6379.")
    assert credentials_refused(wrong) and not credentials_refused(down)
    said = describe_redis_failure(url, wrong)
    assert said.startswith("Redis at redis://:***@redis.internal:6379/0 refused the credentials")
    assert describe_redis_failure(url, down) == (
        "Redis at redis://:***@redis.internal:6379/0 did not answer "
        "(ConnectionError: Error 111 connecting to redis.internal:6379.)")
    assert "hunter2" not in said + describe_redis_failure(url, down)
