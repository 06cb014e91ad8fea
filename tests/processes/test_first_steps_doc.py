"""docs/first-steps.md runs as written: every ``sh`` and ``python`` block, in order, against a
fresh private Redis, the demo's own stand-in and a real ``serve`` (issue 18: the README's curl
example used an undefined $TOKEN). The one change: port 8080 becomes a free port.

``shell`` blocks (a worker with real credentials) and ``text`` blocks (output) are not run.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "first-steps.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)
BLOCK_TIMEOUT_S = 90


def blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(DOC.read_text()) if lang == kind]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_page_has_the_examples_a_new_user_needs():
    shell = "\n".join(blocks("sh"))
    for needle in ("voucherify-ingest demo", "check --role producer", "check --role serve",
                   "voucherify-ingest enqueue", "voucherify-ingest serve", "curl", "TOKEN="):
        assert needle in shell, needle
    assert "enqueue_event" in "\n".join(blocks("python"))


def test_every_example_of_first_steps_runs_as_written(make_redis_server):
    server = make_redis_server(appendonly=False)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VOUCHERIFY_") and k != "REDIS_URL"}
    env.update(REDIS_URL=server.url, VOUCHERIFY_LOG_FORMAT="json",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}")
    port = str(free_port())
    outputs = []
    for kind, body in [*(("sh", b) for b in blocks("sh")),
                       *(("python", b) for b in blocks("python"))]:
        argv = (["bash", "-euo", "pipefail", "-c", body.replace("8080", port)] if kind == "sh"
                else [sys.executable, "-c", body])
        result = subprocess.run(argv, env=env, capture_output=True, text=True,
                                timeout=BLOCK_TIMEOUT_S, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"{kind} block failed:\n{body}\n{result.stdout}\n" \
                                       f"{result.stderr}"
        outputs.append(result.stdout)
    text = "\n".join(outputs)
    assert "delivered 20/20" in text
    assert "ok: " in text and "role producer" in text and "role serve" in text
    assert '"object":"event","type":"signed_up"' in text  # serve's Voucherify-shaped answer
    assert "queued " in text  # the Python example
    client = server.client()
    try:
        # enqueue x2, serve x1, the Python example x1; the demo removed all of its own keys
        assert client.llen("voucherify-events") == 4
        assert not [k for k in client.keys("*") if b"demo" in k or k.startswith(b"_kombu")]
    finally:
        client.close()
