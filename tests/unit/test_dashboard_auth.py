"""The dashboard's guard (Basic users, CSRF tokens, same-origin check) and its setting."""

from __future__ import annotations

import base64

import pytest

from voucherify_ingest.dashboard.auth import Guard, same_origin
from voucherify_ingest.dashboard.letters import BadFilter, Query
from voucherify_ingest.errors import ConfigError
from voucherify_ingest.settings import Settings


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_guard_knows_each_user_and_nothing_else():
    guard = Guard((("ann", "pw:with:colons"), ("bob", "s3cret")))
    assert guard.user_of(_basic("ann:pw:with:colons")) == "ann"
    assert guard.user_of(_basic("bob:s3cret")) == "bob"
    for wrong in (None, "", "Bearer x", _basic("bob:s3cre"), _basic("ann:s3cret"),
                  _basic("bob"), "Basic !!!not-base64", "Basic " + "A" * 5):
        assert guard.user_of(wrong) is None, wrong


def test_guard_refuses_to_exist_without_users():
    with pytest.raises(ConfigError, match="VOUCHERIFY_DASHBOARD_CREDENTIALS"):
        Guard(())


def test_csrf_token_is_per_user_and_per_process():
    one, two = Guard((("ann", "a"), ("bob", "b"))), Guard((("ann", "a"),))
    token = one.csrf_token("ann")
    assert one.csrf_ok("ann", token)
    assert not one.csrf_ok("bob", token)
    assert not two.csrf_ok("ann", token)
    assert not one.csrf_ok("ann", None) and not one.csrf_ok("ann", "")


@pytest.mark.parametrize(("headers", "ok"), [
    ({"Origin": "http://127.0.0.1:9809", "Sec-Fetch-Site": "same-origin"}, True),
    ({"Origin": "http://127.0.0.1:9809"}, True),
    ({"Sec-Fetch-Site": "same-origin"}, True),
    ({"Origin": "http://evil.example"}, False),
    ({"Origin": "null"}, False),
    ({"Origin": "http://127.0.0.1:9809", "Sec-Fetch-Site": "cross-site"}, False),
    ({"Sec-Fetch-Site": "same-site"}, False),
    ({}, False),
])
def test_same_origin(headers, ok):
    assert same_origin(headers, "127.0.0.1:9809")[0] is ok


def test_setting_parses_pairs_and_names_itself_when_wrong():
    settings = Settings.from_env({"VOUCHERIFY_DASHBOARD_CREDENTIALS": "a:pw-one, b:y:pw-two"})
    assert settings.dashboard_credentials == (("a", "pw-one"), ("b", "y:pw-two"))
    assert "pw-" not in repr(settings)
    with pytest.raises(ConfigError, match="VOUCHERIFY_DASHBOARD_CREDENTIALS"):
        Settings.from_env({"VOUCHERIFY_DASHBOARD_CREDENTIALS": "nopassword"})


def test_query_parses_filters_and_names_a_bad_one():
    q = Query.parse({"reason": "rejected", "status": "422", "event": "x", "since": "2h",
                     "until": "2024-05-01T10:00", "q": " u1 ", "other": "ignored"})
    assert (q.reason, q.status, q.event, q.q) == ("rejected", "422", "x", "u1")
    assert q.until == 1714557600.0 and q.since is not None
    for bad, name in (({"reason": "nope"}, "reason"), ({"status": "4xx"}, "status"),
                      ({"since": "soon"}, "since")):
        with pytest.raises(BadFilter, match=name):
            Query.parse(bad)


def test_dashboard_passwords_are_masked_in_logs():
    from voucherify_ingest.logs import _secrets_of, mask_secrets

    settings = Settings.from_env({"VOUCHERIFY_DASHBOARD_CREDENTIALS": "ann:hunter2-long"})
    assert mask_secrets("login hunter2-long", _secrets_of(settings)) == "login ***"
