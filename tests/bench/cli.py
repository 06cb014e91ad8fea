"""How fast the ``voucherify-ingest`` command starts: ``--version`` and ``--help`` (the commands
are loaded lazily, so neither imports Celery, redis-py or the worker), beside a bare
``python -c pass`` started the same way in the same run (the interpreter's own start).

Each command 20 times (quick: 5), interleaved; medians, wall clock, fresh processes.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.bench import BenchContext, Row

GOAL_MS = 150  # issue 15: "goal under 0.15 s"
# The installed console script, as a user runs it (else the module, as in a bare checkout).
_SCRIPT = Path(sys.executable).with_name("voucherify-ingest")
_CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "voucherify_ingest.cli"]
COMMANDS = {
    "bare": [sys.executable, "-c", "pass"],
    "--version": [*_CLI, "--version"],
    "--help": [*_CLI, "--help"],
}


def _start_s(argv: list[str]) -> float:
    # A blocking wait, bounded by a timer: ``subprocess.run(timeout=...)`` polls the child with
    # sleeps of up to 50 ms, which rounded every figure up to a multiple of ~32 ms.
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    try:
        code = proc.wait()
    finally:
        watchdog.cancel()
    elapsed = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{argv} exited with {code}")
    return elapsed


def run(ctx: BenchContext) -> list[Row]:
    n = 5 if ctx.quick else 20
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for argv in COMMANDS.values():  # warm the page cache
        _start_s(argv)
    for _ in range(n):
        for name, argv in COMMANDS.items():
            times[name].append(_start_s(argv) * 1000)
    bare = statistics.median(times["bare"])
    return [
        Row(f"CLI start, voucherify-ingest {name}, median", median, "ms",
            baseline=bare, baseline_name="python -c pass", goal=f"< {GOAL_MS} ms",
            met=median < GOAL_MS, note=f"{n} runs each, interleaved")
        for name in ("--version", "--help")
        for median in [statistics.median(times[name])]
    ]
