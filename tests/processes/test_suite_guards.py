"""The suite cannot go green with nothing run (issue 14): without a redis-server the
Redis-backed tests fail, they do not skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_no_redis_server_fails_the_run_instead_of_skipping(tmp_path):
    env = {**os.environ, "REDIS_SERVER_BIN": str(tmp_path / "no-such-redis-server")}
    env.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/redis/test_producer.py", "-x"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-2000:]
    assert "no usable redis-server" in out, out[-2000:]
    assert "skipped" not in out.splitlines()[-1], out.splitlines()[-1]
