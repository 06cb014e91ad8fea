"""The stand-in API in its own process, driven over its ``/_standin/*`` HTTP controls.

In-process, the stand-in's handler threads share a GIL with whatever the test does meanwhile
(polling Redis, probes), which stretches every answer; chaos scenarios and benchmarks run it
apart (``python -m voucherify_ingest.standin --port 0``) so its timing is its own.
"""

from __future__ import annotations

import collections
import re
import sys
import time
from collections.abc import Callable

import requests

from tests.support.pipeline import APP_ID, APP_TOKEN
from tests.support.procs import ManagedProcess
from voucherify_ingest.standin import Received

_LISTENING = re.compile(r"standin listening on (http://\S+)")


class RemoteStandIn:
    def __init__(self, make_process: Callable[..., ManagedProcess], *, latency_ms: float = 0,
                 seed: int = 0, app_id: str = APP_ID, app_token: str = APP_TOKEN):
        argv = [sys.executable, "-m", "voucherify_ingest.standin", "--port", "0",
                "--app-id", app_id,
                "--app-token", app_token, "--latency-ms", str(latency_ms), "--seed", str(seed)]
        self.proc = make_process(argv, name="standin")
        line = self.proc.wait_for_output(_LISTENING, timeout=30)
        self.url = _LISTENING.search(line).group(1)
        self.control = f"{self.url}/_standin"
        self.http = requests.Session()
        self.http.trust_env = False

    # -- records --

    def received(self) -> list[Received]:
        rows = self.http.get(f"{self.control}/received", timeout=120).json()
        return [
            Received(
                at=row["at"], mono=row.get("mono", 0.0), event_id=row["event_id"],
                body=row["body"], headers={}, status=row["status"],
                schema_valid=row["schema_valid"], schema_errors=row["schema_errors"],
                outcome=row.get("outcome", "ok"),
            )
            for row in rows
        ]

    def delivered_ids(self) -> collections.Counter:
        return collections.Counter(
            r.event_id for r in self.received() if r.status == 200 and r.event_id
        )

    def stats(self) -> dict:
        return self.http.get(f"{self.control}/stats", timeout=30).json()

    def wait_for_delivered(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats()["delivered"] >= n:
                return True
            time.sleep(0.25)
        return False

    # -- controls (see voucherify_ingest.standin.StandIn) --

    def configure(self, **changes) -> dict:
        response = self.http.post(f"{self.control}/config", json=changes, timeout=30)
        response.raise_for_status()
        return response.json()

    def set_chaos(self, **chaos) -> None:
        self.configure(chaos=chaos)

    def set_down(self, status: int = 503) -> None:
        self.configure(down=status)

    def set_up(self) -> None:
        self.configure(up=True)

    def refuse_for(self, seconds: float, retry_after_s: int | None = None) -> None:
        self.configure(refuse_for={"seconds": seconds, "retry_after_s": retry_after_s})

    def set_latency(self, seconds: float) -> None:
        self.configure(latency_s=seconds)

    def set_activity(self, **activity) -> None:
        """List Customer Activity: ``lag_s``, ``fail`` (a status), ``stall_s``."""
        self.configure(activity=activity)

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
