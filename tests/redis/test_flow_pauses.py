"""The fleet-wide pauses are visible to readers of Redis (stats, metrics, the dashboard).

A worker writes the 401/403 pause (``worker/authpause.py``); ``FlowReader`` must show it with
no app token and whether or not the reader knows the app id, and the dashboard must say so.
"""

from __future__ import annotations

import time

from voucherify_ingest.dashboard import pages
from voucherify_ingest.flow import FlowReader
from voucherify_ingest.keys import auth_pause_key
from voucherify_ingest.settings import Settings


def _settings(namespace: str, **extra) -> Settings:
    return Settings.from_env({"VOUCHERIFY_QUEUE": namespace, "VOUCHERIFY_KEY_PREFIX": namespace,
                              "VOUCHERIFY_RATE_LIMIT": "off", **extra}, role="producer")


def test_the_auth_pause_is_read_with_or_without_the_app_id(redis_client, namespace):
    with_id = _settings(namespace, VOUCHERIFY_APP_ID="app-1")
    assert FlowReader(redis_client, with_id).limiter_state().auth_paused_since is None

    began_s = int(time.time()) - 90
    key = auth_pause_key(namespace, "app-1", with_id.api_base)
    redis_client.set(key, began_s * 1000)
    redis_client.set(f"{key}:probe", "1")  # the probe holder's key is not a pause

    for settings in (with_id, _settings(namespace)):  # a dashboard host knows no app id
        since = FlowReader(redis_client, settings).limiter_state().auth_paused_since
        assert since == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began_s))


def test_the_dashboard_shows_the_pauses_and_the_cycle():
    lim = {"reserve_pause_left_s": 3.2, "bulk_starved_s": 12.0,
           "cycle": {"used": 200, "quota": 1000, "left_live": 600, "left_bulk": 0,
                     "resets": "2027-01-01T00:00:00Z", "bulk_paused": True,
                     "live_paused": False}}
    text = pages._budget_html(lim)
    assert 'data-testid="reserve-pause"' in text and "3.2 s left" in text
    assert 'data-testid="bulk-starved"' in text and "12 s" in text
    assert "200 of 1,000 calls used" in text and "bulk paused" in text
    assert pages._budget_html({}) == ""
