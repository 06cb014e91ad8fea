"""Managed subprocesses for tests: own process group, output captured to a file.

Every process started here (and every ``RedisServer``, which registers its
``redis-server`` the same way) is kept in a module-level registry. An
``atexit`` hook SIGKILLs whatever is still registered, by process group, so a
test run that forgets to stop something (or is interrupted) leaks nothing.
A SIGKILL of the pytest process itself cannot be covered by ``atexit``.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "ManagedProcess",
    "ProcessOutputError",
    "kill_all",
    "pid_alive",
    "register_popen",
    "unregister_popen",
]

TAIL_CHARS = 4000

_registry_lock = threading.Lock()
# pid -> Popen of a process started with start_new_session=True (pid == pgid).
_registry: dict[int, subprocess.Popen] = {}


def register_popen(proc: subprocess.Popen) -> None:
    """Track a process (a session/group leader) so the atexit hook can kill it."""
    with _registry_lock:
        _registry[proc.pid] = proc


def unregister_popen(proc: subprocess.Popen) -> None:
    with _registry_lock:
        if _registry.get(proc.pid) is proc:
            del _registry[proc.pid]


def _killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def _signal_and_reap(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Signal the whole group of ``proc`` and reap the leader (bounded)."""
    if proc.poll() is None:
        _killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def kill_all(timeout: float = 5.0) -> list[int]:
    """SIGKILL every registered process group that is still around.

    Returns the pids that were still running. Used by the atexit hook; tests
    may call it too.
    """
    with _registry_lock:
        procs = list(_registry.values())
        _registry.clear()
    killed = []
    for proc in procs:
        if proc.poll() is None:
            killed.append(proc.pid)
        # Even when the leader is gone, members of its group may remain.
        _killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    return killed


atexit.register(kill_all)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie.

    A grandchild killed with its group is re-parented and may sit as a zombie
    until its new parent reaps it; that counts as dead here.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (or raced with exit): trust kill(0)
    # Format: "pid (comm) state ..."; comm may contain spaces/parens.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _tail(text: str, limit: int = TAIL_CHARS) -> str:
    if len(text) <= limit:
        return text
    return "...[truncated]...\n" + text[-limit:]


class ProcessOutputError(AssertionError):
    """Raised by ``wait_for_output`` on timeout or when the process exits first."""


class ManagedProcess:
    """A subprocess in its own process group with stdout+stderr in a log file.

    ``env`` holds overrides applied on top of ``os.environ`` (a value of
    ``None`` removes the variable); pass ``inherit_env=False`` to use ``env``
    alone. ``PYTHONUNBUFFERED=1`` is set unless ``env`` says otherwise so that
    Python children flush output promptly for ``wait_for_output``.

    The log goes to ``log_path`` if given, else into ``log_dir`` (or a private
    temp dir, removed when this object is collected or at interpreter exit).
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str | None] | None = None,
        inherit_env: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        name: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        if not self.argv:
            raise ValueError("argv must not be empty")
        self.name = name or Path(self.argv[0]).name
        self.cwd = os.fspath(cwd) if cwd is not None else None
        merged: dict[str, str] = dict(os.environ) if inherit_env else {}
        merged.setdefault("PYTHONUNBUFFERED", "1")
        for key, value in (env or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        self.env = merged
        if log_path is not None:
            self.log_path = Path(log_path)
        else:
            if log_dir is None:
                log_dir = tempfile.mkdtemp(prefix="managed-proc-")
                weakref.finalize(self, shutil.rmtree, log_dir, True)
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)[:40] or "proc"
            fd, path = tempfile.mkstemp(prefix=f"{safe}-", suffix=".log", dir=log_dir)
            os.close(fd)
            self.log_path = Path(path)
        self._proc: subprocess.Popen | None = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> ManagedProcess:
        if self._proc is not None:
            raise RuntimeError(f"{self.name}: already started (pid {self._proc.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        register_popen(self._proc)
        return self

    @property
    def started(self) -> bool:
        return self._proc is not None

    @property
    def pid(self) -> int:
        return self._require().pid

    @property
    def returncode(self) -> int | None:
        """Exit code (negative signal number if killed), or None while running."""
        if self._proc is None:
            return None
        rc = self._proc.poll()
        if rc is not None:
            unregister_popen(self._proc)
        return rc

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for exit (raises subprocess.TimeoutExpired after ``timeout``)."""
        rc = self._require().wait(timeout=timeout)
        unregister_popen(self._proc)
        return rc

    def send_signal(self, sig: int, *, group: bool = False) -> None:
        """Signal the process (or its whole process group with ``group=True``)."""
        proc = self._require()
        if proc.poll() is not None:
            return
        if group:
            _killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM the process group, wait up to ``timeout``, then SIGKILL.

        Leftover group members (e.g. pool children) are SIGKILLed after the
        leader exits. Returns the leader's return code.
        """
        proc = self._require()
        try:
            _signal_and_reap(proc, signal.SIGTERM, timeout)
        finally:
            _killpg(proc.pid, signal.SIGKILL)
            unregister_popen(proc)
        return proc.returncode

    def kill(self) -> int:
        """SIGKILL the whole process group and reap the leader."""
        proc = self._require()
        try:
            _signal_and_reap(proc, signal.SIGKILL, 5.0)
        finally:
            _killpg(proc.pid, signal.SIGKILL)
            unregister_popen(proc)
        return proc.returncode

    def __enter__(self) -> ManagedProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None:
            self.terminate()

    # -- output ----------------------------------------------------------
    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr interleaved)."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data.decode("utf-8", errors="replace")

    def mark(self) -> int:
        """Current size of the log; pass as ``since=`` to only match newer output."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def tail(self, limit: int = TAIL_CHARS) -> str:
        return _tail(self.output(), limit)

    def wait_for_output(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 10.0,
        *,
        since: int = 0,
        interval: float = 0.05,
    ) -> str:
        """Poll the log until ``pattern`` (substring or compiled regex) appears.

        Only output after byte offset ``since`` (see ``mark()``) is searched.
        Returns the matched text. Raises ``ProcessOutputError`` with the log
        tail if ``timeout`` passes or the process exits without printing it.
        """
        proc = self._require()
        deadline = time.monotonic() + timeout

        def find() -> str | None:
            try:
                with open(self.log_path, "rb") as fh:
                    fh.seek(since)
                    text = fh.read().decode("utf-8", errors="replace")
            except FileNotFoundError:
                return None
            if isinstance(pattern, re.Pattern):
                m = pattern.search(text)
                return m.group(0) if m else None
            return pattern if pattern in text else None

        while True:
            exited = proc.poll() is not None
            found = find()  # read after poll(): output written before exit is seen
            if found is not None:
                return found
            if exited:
                unregister_popen(proc)
                raise ProcessOutputError(
                    f"{self.name} (pid {proc.pid}) exited with {proc.returncode} "
                    f"before printing {_describe(pattern)}; log {self.log_path}:\n"
                    f"{self.tail()}"
                )
            if time.monotonic() >= deadline:
                raise ProcessOutputError(
                    f"timed out after {timeout:.1f}s waiting for {_describe(pattern)} "
                    f"from {self.name} (pid {proc.pid}, still running); "
                    f"log {self.log_path}:\n{self.tail()}"
                )
            time.sleep(interval)

    def _require(self) -> subprocess.Popen:
        if self._proc is None:
            raise RuntimeError(f"{self.name}: not started")
        return self._proc

    def __repr__(self) -> str:
        state = "not started"
        if self._proc is not None:
            rc = self._proc.poll()
            state = f"pid={self._proc.pid} " + ("running" if rc is None else f"rc={rc}")
        return f"<ManagedProcess {self.name} {state}>"


def _describe(pattern: str | re.Pattern[str]) -> str:
    if isinstance(pattern, re.Pattern):
        return f"regex {pattern.pattern!r}"
    return repr(pattern)
