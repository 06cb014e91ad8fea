"""Run the ingest app under uvicorn (httptools parser, uvloop), in one or several processes.

Several processes serve one port: the parent reserves it, forks the workers (each builds its
own app, event loop and Redis connection after the fork) and forwards SIGTERM and SIGINT to
them; a worker that dies is started again. On Linux each worker listens on its own
``SO_REUSEPORT`` socket, so the kernel spreads connections evenly; with one shared listening
socket, whichever process woke first took most keep-alive connections (measured: 25k vs 233k
requests between two workers in one 8 s run), leaving the other one idle.

uvicorn's own ``--workers`` would need an import string and re-read the environment in each
spawned child; forking after the settings are checked keeps a bad configuration a one-line
error in the parent.

Why this stack: see the commit introducing it and ``tests/bench/serve.py``; measured on the
2-core machine, uvicorn+httptools answered a bare 200 at ~14k req/s against granian's ~10k
(ASGI), with a lower p99, and ran the enqueueing app faster too.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

from voucherify_ingest.settings import Settings

AppFactory = Callable[[], Any]
_RESTART_PAUSE_S = 1.0


#: Linux (3.9+) balances connections across the listening sockets of a SO_REUSEPORT group.
REUSE_PORT = hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


def bind_socket(
    host: str, port: int, *, backlog: int = 2048, listen: bool = True, reuse_port: bool = False
) -> socket.socket:
    """A TCP socket bound to ``host:port``, listening unless ``listen=False`` (a reservation)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any, *, log_level: str) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        http="httptools",
        loop="uvloop" if _has_uvloop() else "asyncio",
        ws="none",
        lifespan="on",
        log_config=None,  # our structlog setup (voucherify_ingest/logs.py) renders its records
        log_level=log_level.lower(),
        access_log=False,  # one line per request would cost more than the request
        proxy_headers=False,
        server_header=False,
        backlog=2048,
        timeout_graceful_shutdown=10,
    )


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run_one(make_app: AppFactory, sock: socket.socket, settings: Settings) -> None:
    """Serve on ``sock`` in this process until SIGTERM/SIGINT (uvicorn's graceful stop)."""
    import uvicorn

    server = uvicorn.Server(uvicorn_config(make_app(), log_level=settings.log_level))
    # Everything built so far (modules, schemas, the app) lives as long as the process: move
    # it out of the collector's reach, so a full collection under load scans only what
    # requests allocate instead of pausing every request for the whole heap.
    gc.collect()
    gc.freeze()
    server.run(sockets=[sock])


def serve(
    make_app: AppFactory, settings: Settings, *, host: str, port: int, workers: int = 1
) -> None:
    """Bind, log ``serve_ready`` (with the real port: ``--port 0`` picks a free one), serve."""
    log = structlog.get_logger("voucherify_ingest.serve")
    # Several workers: the parent only reserves the port (bound, never listening, so no
    # connection waits on it); each worker listens on a socket of its own in the same group.
    per_worker = workers > 1 and REUSE_PORT
    sock = bind_socket(host, port, listen=not per_worker, reuse_port=per_worker)
    bound_port = sock.getsockname()[1]
    log.info(
        "serve_ready", host=host, port=bound_port, url=f"http://{host}:{bound_port}/v1/events",
        workers=workers, queue=settings.queue, redis=settings.safe_redis_url, pid=os.getpid(),
    )
    try:
        if workers <= 1:
            with _stop_signals_end_serving():
                run_one(make_app, sock, settings)
        else:
            def worker_socket() -> socket.socket:
                if per_worker:
                    return bind_socket(host, bound_port, reuse_port=True)
                return sock

            _Supervisor(make_app, worker_socket, settings, workers, log).run()
    finally:
        sock.close()
        log.info("serve_stopped", pid=os.getpid())


@contextlib.contextmanager
def _stop_signals_end_serving():
    """After its graceful stop, uvicorn re-raises the SIGTERM/SIGINT it caught with the handler
    that was there before it; under the default handler that killed the process (exit 143, no
    ``serve_stopped``). A handler raising ``SystemExit(0)`` unwinds through ``serve``'s logging
    and exits 0, as the supervisor of ``--workers 2`` does; before uvicorn has installed its own
    handlers (while the app is built) it stops the process the same way."""
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, _exit_cleanly) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_cleanly(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


class _Supervisor:
    """Fork ``workers`` children, each serving on ``make_socket()``; forward stop signals;
    restart the dead."""

    def __init__(self, make_app, make_socket, settings, workers, log):
        self.make_app, self.make_socket, self.settings = make_app, make_socket, settings
        self.workers, self.log = workers, log
        self.children: dict[int, int] = {}  # pid -> slot
        self.stopping = False

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in range(self.workers):
                self._spawn(slot)
            while self.children:
                try:
                    pid, status = os.wait()
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
                slot = self.children.pop(pid, None)
                if slot is None or self.stopping:
                    continue
                self.log.warning("serve_worker_died", pid=pid, status=status, slot=slot)
                time.sleep(_RESTART_PAUSE_S)
                if not self.stopping:
                    self._spawn(slot)
        finally:
            self._stop(signal.SIGTERM, None)
            self._reap(timeout_s=15)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # child: default signal handling, then uvicorn installs its own
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                run_one(self.make_app, self.make_socket(), self.settings)
            except BaseException:  # noqa: BLE001 - the child must never return into the parent
                self.log.exception("serve_worker_crashed", pid=os.getpid())
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = slot

    def _stop(self, signum: int, _frame: Any) -> None:
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _reap(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.children and time.monotonic() < deadline:
            for pid in list(self.children):
                with contextlib.suppress(ChildProcessError):
                    done, _ = os.waitpid(pid, os.WNOHANG)
                    if not done:
                        continue
                self.children.pop(pid, None)
            time.sleep(0.05)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()
