"""The core CLI as a user runs it: subprocesses, real Redis, the stand-in."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.pipeline import make_env

CLI = [sys.executable, "-m", "voucherify_ingest.cli"]


def run(args, env, stdin=None, timeout=60):
    return subprocess.run(CLI + args, env=env, input=stdin, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def env(redis_url, namespace, standin):
    return {"PATH": "/usr/bin:/bin", **make_env(redis_url, namespace, standin.url)}


def test_enqueue_from_argument_and_stdin(env, redis_client, namespace):
    one = run(["enqueue", '{"event":"a","customer":{"source_id":"u"}}'], env)
    assert one.returncode == 0, one.stderr
    two = run(["enqueue", "--event-id", "fixed-1"], env,
              stdin='{"event":"b","customer":{"id":"cust_1"}}')
    assert two.returncode == 0, two.stderr
    assert two.stdout.strip() == "fixed-1"
    assert redis_client.llen(f"{namespace}-events") == 2


def test_enqueue_refuses_bad_input_clearly(env, redis_client, namespace):
    bad = run(["enqueue", '{"event":"a","costumer":{"source_id":"u"}}'], env)
    assert bad.returncode == 1
    assert "costumer" in bad.stderr and "Traceback" not in bad.stderr
    garbage = run(["enqueue", "{not json"], env)
    assert garbage.returncode == 2
    assert "not valid JSON" in garbage.stderr
    assert redis_client.llen(f"{namespace}-events") == 0


def test_check_ok_and_fail(env):
    ok = run(["check"], env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok:")
    no_creds = run(["check"], {k: v for k, v in env.items() if k != "VOUCHERIFY_APP_TOKEN"})
    assert no_creds.returncode == 1
    assert "VOUCHERIFY_APP_TOKEN" in no_creds.stdout
    down = run(["check"], {**env, "REDIS_URL": "redis://:pw-secret-1@127.0.0.1:1/0"})
    assert down.returncode == 1
    assert "did not answer" in down.stdout and "pw-secret-1" not in down.stdout + down.stderr


def test_demo_runs_the_whole_pipeline(redis_url):
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url}
    result = run(["demo", "-n", "5"], env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOCAL STAND-IN API" in result.stdout
    assert "delivered 5/5" in result.stdout
    first = result.stdout.split("received ", 1)[1].split(": ", 1)[1].splitlines()[0]
    assert json.loads(first)["customer"]["source_id"].startswith("demo-user-")


def test_demo_never_uses_the_stand_in_with_real_credentials(redis_url):
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "VOUCHERIFY_APP_ID": "real",
           "VOUCHERIFY_APP_TOKEN": "real-token-value"}
    result = run(["demo"], env)
    assert result.returncode == 1
    assert "--real" in result.stderr
    assert "STAND-IN" not in result.stdout
