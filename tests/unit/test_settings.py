"""Settings come from the environment, fail clearly, and never show secrets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from voucherify_ingest.errors import ConfigError
from voucherify_ingest.settings import Settings, redact_url


def test_defaults():
    s = Settings.from_env({})
    assert s.api_url == "https://api.voucherify.io"
    assert s.events_url == "https://api.voucherify.io/v1/events"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.queue == "voucherify-events"


@pytest.mark.parametrize(
    "url",
    ["https://us1.api.voucherify.io", "https://as1.api.voucherify.io/",
     "https://acme.dedicated.voucherify.io", "http://127.0.0.1:8099"],
)
def test_regional_and_dedicated_api_urls(url):
    s = Settings.from_env({"VOUCHERIFY_API_URL": url})
    assert s.events_url == url.rstrip("/") + "/v1/events"


def test_numbers_and_booleans_are_parsed():
    s = Settings.from_env({
        "VOUCHERIFY_READ_TIMEOUT_S": "2.5", "VOUCHERIFY_MAX_RETRIES": "3",
        "VOUCHERIFY_LOG_PII": "yes", "VOUCHERIFY_INGEST_CREDENTIALS": "a:b, c:d",
    })
    assert s.read_timeout_s == 2.5
    assert s.max_retries == 3
    assert s.log_pii is True
    assert s.ingest_credentials == (("a", "b"), ("c", "d"))


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"VOUCHERIFY_MAX_RETRIES": "many"}, "VOUCHERIFY_MAX_RETRIES"),
        ({"VOUCHERIFY_READ_TIMEOUT_S": "-1"}, "VOUCHERIFY_READ_TIMEOUT_S"),
        ({"VOUCHERIFY_API_URL": "api.voucherify.io"}, "VOUCHERIFY_API_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"VOUCHERIFY_INGEST_CREDENTIALS": "nocolon"}, "VOUCHERIFY_INGEST_CREDENTIALS"),
        ({"VOUCHERIFY_LOG_PII": "maybe"}, "VOUCHERIFY_LOG_PII"),
    ],
)
def test_bad_values_name_the_variable(env, named):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert named in str(info.value)


def test_missing_credentials_name_each_variable():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({}).require_credentials()
    assert "VOUCHERIFY_APP_ID" in str(info.value) and "VOUCHERIFY_APP_TOKEN" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"VOUCHERIFY_APP_ID": "x"}).require_credentials()
    assert "VOUCHERIFY_APP_TOKEN" in str(info.value)
    assert "VOUCHERIFY_APP_ID" not in str(info.value)


def test_redis_password_is_redacted_everywhere():
    url = "rediss://user:hunter2secret@redis.example:6380/1"
    assert redact_url(url) == "rediss://user:***@redis.example:6380/1"
    s = Settings.from_env({"REDIS_URL": url, "VOUCHERIFY_APP_TOKEN": "tok-abcdef"})
    assert "hunter2secret" not in repr(s)
    assert "tok-abcdef" not in repr(s)
    assert "hunter2secret" not in s.safe_redis_url


def test_visibility_timeout_must_cover_one_attempt():
    s = Settings.from_env({"VOUCHERIFY_VISIBILITY_TIMEOUT_S": "10"})
    with pytest.raises(ConfigError) as info:
        s.check_visibility_timeout()
    assert "VOUCHERIFY_VISIBILITY_TIMEOUT_S" in str(info.value)
    Settings.from_env({}).check_visibility_timeout()  # the defaults fit together


def test_worker_refuses_to_start_without_credentials():
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"}
    result = subprocess.run(
        [sys.executable, "-m", "voucherify_ingest.cli", "worker"], env=env, capture_output=True,
        text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "VOUCHERIFY_APP_ID" in result.stderr and "VOUCHERIFY_APP_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_failure_handling_settings_have_documented_defaults_and_are_checked():
    settings = Settings.from_env({})
    assert settings.retry_after_max_s == 3600.0
    assert settings.auth_dead_letter_after_s == 3600.0
    assert settings.auth_probe_interval_s == 30.0
    at_once = Settings.from_env({"VOUCHERIFY_AUTH_DEAD_LETTER_AFTER_S": "0"})
    assert at_once.auth_dead_letter_after_s == 0
    for name in ("VOUCHERIFY_RETRY_AFTER_MAX_S", "VOUCHERIFY_AUTH_PROBE_INTERVAL_S"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: "0"})
    with pytest.raises(ConfigError, match="VOUCHERIFY_AUTH_DEAD_LETTER_AFTER_S"):
        Settings.from_env({"VOUCHERIFY_AUTH_DEAD_LETTER_AFTER_S": "-1"})
