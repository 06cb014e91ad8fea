"""Settings of issue 17: the Sentinel URL, replica acknowledgement, OAuth; clear errors."""

from __future__ import annotations

import pytest

from producers.spool_files import redis_target
from voucherify_ingest.errors import ConfigError
from voucherify_ingest.logs import _secrets_of
from voucherify_ingest.redis_conn import sentinel_hosts, sentinel_master_options
from voucherify_ingest.settings import Settings, redact_url
from worker.app import broker_transport_options, create_app

URL = "sentinel://:p%40ss@10.0.0.1:26379/2;sentinel://10.0.0.2;sentinel://10.0.0.3:26380"


def _env(**env: str) -> Settings:
    return Settings.from_env(env)


def test_sentinel_url_needs_the_master_name():
    with pytest.raises(ConfigError, match="VOUCHERIFY_REDIS_SENTINEL_MASTER"):
        _env(REDIS_URL=URL)


def test_sentinel_url_parts_are_checked():
    with pytest.raises(ConfigError, match="REDIS_URL"):
        _env(REDIS_URL="sentinel://a:1;redis://b:2", VOUCHERIFY_REDIS_SENTINEL_MASTER="m")


def test_sentinel_hosts_password_and_db():
    assert sentinel_hosts(URL) == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380)]
    assert sentinel_master_options(URL) == {"password": "p@ss", "db": 2}
    assert "p%40ss" not in redact_url(URL) and redact_url(URL).count("sentinel://") == 3
    assert redis_target(URL) == "sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26380/2"


def test_sentinel_secrets_are_masked_in_logs():
    settings = _env(REDIS_URL=URL, VOUCHERIFY_REDIS_SENTINEL_MASTER="m",
                    VOUCHERIFY_REDIS_SENTINEL_PASSWORD="sentinel-secret")
    secrets = _secrets_of(settings)
    assert "sentinel-secret" in secrets and "p@ss" in secrets
    assert "sentinel-secret" not in repr(settings)


def test_worker_uses_the_sentinel_transport_with_master_name():
    settings = _env(REDIS_URL=URL, VOUCHERIFY_REDIS_SENTINEL_MASTER="m",
                    VOUCHERIFY_REDIS_SENTINEL_PASSWORD="sp")
    options = broker_transport_options(settings)
    assert options["master_name"] == "m"
    assert options["sentinel_kwargs"]["password"] == "sp"
    app = create_app(settings)
    assert app.conf.broker_transport == "worker.transport:SentinelTransport"
    plain = create_app(_env())
    assert plain.conf.broker_transport == "worker.transport:Transport"
    assert "master_name" not in broker_transport_options(_env())


def test_wait_timeout_must_be_bounded():
    with pytest.raises(ConfigError, match="VOUCHERIFY_REDIS_WAIT_TIMEOUT_MS"):
        _env(VOUCHERIFY_REDIS_WAIT_REPLICAS="1", VOUCHERIFY_REDIS_WAIT_TIMEOUT_MS="0")
    with pytest.raises(ConfigError, match="VOUCHERIFY_REDIS_WAIT_REPLICAS"):
        _env(VOUCHERIFY_REDIS_WAIT_REPLICAS="two")


def test_auth_and_scope():
    assert _env().auth == "pair"
    with pytest.raises(ConfigError, match="VOUCHERIFY_AUTH"):
        _env(VOUCHERIFY_AUTH="bearer")
    with pytest.raises(ConfigError, match="VOUCHERIFY_OAUTH_SCOPE"):
        _env(VOUCHERIFY_AUTH="oauth", VOUCHERIFY_OAUTH_SCOPE="events,customers")
    assert _env(VOUCHERIFY_AUTH="oauth", VOUCHERIFY_OAUTH_SCOPE="events customers").auth == "oauth"


def test_the_sentinel_channel_takes_both_the_sentinel_options_and_the_lane_order():
    """The atomic-take mixin carries the plain channel's option names; the Sentinel channel
    must keep master_name (else the worker cannot find the master) and gain lane_order."""
    from worker.transport import Channel, SentinelChannel

    assert {"master_name", "sentinel_kwargs", "lane_order"} <= set(
        SentinelChannel.from_transport_options)
    assert "lane_order" in Channel.from_transport_options
