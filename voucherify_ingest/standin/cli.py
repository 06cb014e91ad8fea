"""``python -m voucherify_ingest.standin``: run a stand-in in the foreground."""

from __future__ import annotations

import argparse
import signal
import threading

from voucherify_ingest.standin.server import StandIn


def main(argv: list[str] | None = None) -> int:
    """Run a stand-in in the foreground until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m voucherify_ingest.standin",
        description="A local stand-in for Voucherify's POST /v1/events.",
        epilog="example: python -m voucherify_ingest.standin --port 8099 --app-id X --app-token Y",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port")
    parser.add_argument("--app-id", default="test-app")
    parser.add_argument("--app-token", default="test-token")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="seed for chaos faults")
    parser.add_argument(
        "--token-lifetime-s", type=float, default=900.0,
        help="lifetime of the OAuth tokens POST /v1/oauth/token issues (Voucherify: 900)",
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    standin = StandIn(
        args.app_id, args.app_token, host=args.host, port=args.port, seed=args.seed,
        token_lifetime_s=args.token_lifetime_s,
    )
    try:
        standin.start()
    except OSError as exc:
        parser.exit(2, f"standin: cannot listen on {args.host}:{args.port}: {exc}\n")
    standin.set_latency(args.latency_ms / 1000)
    print(f"standin listening on {standin.url}", flush=True)
    try:
        stop.wait()
    finally:
        standin.stop()
    return 0
