"""``python -m tests.bench [--quick] [--only NAME ...]``: run every benchmark, print one table.

Uses ``REDIS_URL`` when set (keys under a private prefix, never flushed), else starts a private
redis-server. Benchmark modules live beside this file; each has ``run(ctx) -> list[Row]``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import signal
import sys
import tempfile
import time
import traceback

from tests.bench import BenchContext, Row, format_table

MODULES = [
    "enqueue", "drain", "throughput", "ratelimit", "lanes", "dlq", "serve", "spool", "memory",
    "dashboard", "replica_wait", "indoubt", "cli",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", nargs="*", default=None, help=f"some of {MODULES}")
    args = parser.parse_args(argv)
    names = args.only or MODULES
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: the finally blocks below and in each
    # benchmark stop the redis-server and worker processes they started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    server = None
    redis_url = os.environ.get("REDIS_URL", "").strip()
    if not redis_url:
        from tests.support.redis_server import RedisServer

        server = RedisServer(appendonly=False).start()
        redis_url = server.url
    rows: list[Row] = []
    failures = 0
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="voucherify-bench-") as workdir:
            for name in names:
                try:
                    module = importlib.import_module(f"tests.bench.{name}")
                except ModuleNotFoundError as exc:
                    if exc.name == f"tests.bench.{name}":
                        print(f"# {name}: not present, skipped", flush=True)
                        continue
                    raise
                ctx = BenchContext(redis_url=redis_url, quick=args.quick, workdir=workdir)
                started = time.monotonic()
                try:
                    new_rows = module.run(ctx)
                except Exception:
                    failures += 1
                    print(f"# {name}: FAILED\n{traceback.format_exc()}", flush=True)
                    continue
                rows += new_rows
                print(f"# {name}: {time.monotonic() - started:.1f}s", flush=True)
                print(format_table(new_rows), flush=True)
    finally:
        if server is not None:
            server.stop()
    print()
    print(format_table(rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
