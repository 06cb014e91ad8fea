"""The project overrides private methods of kombu and redis-py; this test fails loudly the day
one of them changes upstream (issue 14).

``worker/transport.py`` replaces kombu's Redis ``Channel._brpop_start`` / ``_brpop_read`` (and
uses ``_q_for_pri``), ``worker/kombu_fix.py`` wraps ``Channel._connparams`` and
``QoS.restore_unacked_once``, and the serve pusher (``producers/serve/pusher.py``) drives
redis-py's asyncio connection by hand (``make_connection``, ``send_packed_command``,
``read_response``, ``disconnect``). Each method's source is pinned by a hash, taken from the
versions in ``constraints.txt``. When this fails after an upgrade: read the new upstream method,
check the override still matches it, then update the hash (and the bounds in pyproject.toml).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

PINNED = {
    # (module, qualified name): first 16 hex digits of sha256(inspect.getsource(...))
    ("kombu.transport.redis", "Channel._brpop_start"): "06723d707ddf2240",
    ("kombu.transport.redis", "Channel._brpop_read"): "c42518699709f2df",
    ("kombu.transport.redis", "Channel._q_for_pri"): "f3997660680dd00f",
    ("kombu.transport.redis", "Channel._connparams"): "e9a4295085a8fb90",
    ("kombu.transport.redis", "QoS.restore_unacked_once"): "c81f3d0fb29b9599",
    ("redis.asyncio.connection", "ConnectionPool.make_connection"): "d6f95077e2414e79",
    ("redis.asyncio.connection", "AbstractConnection.send_packed_command"): "baaeabd916209157",
    ("redis.asyncio.connection", "AbstractConnection.read_response"): "c1b374bc1a30d0b4",
    ("redis.asyncio.connection", "AbstractConnection.disconnect"): "11194f01c2f6d3c2",
}

# What pyproject.toml allows; the hashes above were taken within these bounds.
TESTED = {"celery": ("5.7", "5.8"), "kombu": ("5.7", "5.8"), "redis": ("8.1", "8.2")}


def _resolve(module: str, qualname: str):
    target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


@pytest.mark.parametrize(("module", "qualname"), sorted(PINNED), ids=lambda v: v)
def test_overridden_upstream_method_is_unchanged(module, qualname):
    source = inspect.getsource(_resolve(module, qualname))
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    assert digest == PINNED[(module, qualname)], (
        f"UPSTREAM CHANGED: {module}.{qualname} is not the code our override was written "
        f"against (kombu {version('kombu')}, redis {version('redis')}). Re-read it, check "
        "worker/transport.py, worker/kombu_fix.py and producers/serve/pusher.py, then update "
        "the hash in this test."
    )


@pytest.mark.parametrize("name", sorted(TESTED))
def test_installed_versions_are_within_the_tested_bounds(name):
    low, high = TESTED[name]
    assert Version(low) <= Version(version(name)) < Version(high), (
        f"{name} {version(name)} is outside the tested range [{low}, {high})")


def test_pyproject_bounds_match_the_tested_ones():
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    for name, (low, high) in TESTED.items():
        assert f'"{name}>={low},<{high}"' in text, f"pyproject.toml does not bound {name}"


def test_constraints_pin_versions_within_the_tested_bounds():
    pins = {}
    for line in (Path(__file__).parents[2] / "constraints.txt").read_text().splitlines():
        name, sep, pinned = line.partition("==")
        if sep and not line.startswith("#"):
            pins[name.strip().lower()] = pinned.strip()
    for name, (low, high) in TESTED.items():
        assert Version(low) <= Version(pins[name]) < Version(high), (name, pins.get(name))


def test_python_claims_match_what_is_tested():
    """requires-python and the classifiers say the same, and this interpreter is one of them
    (a run on an unclaimed Python fails here instead of passing silently)."""
    import re
    import sys

    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    floor = re.search(r'^requires-python = ">=3\.(\d+)"$', text, re.M)
    claimed = sorted(int(m) for m in re.findall(r'"Programming Language :: Python :: 3\.(\d+)"',
                                                  text))
    assert floor and claimed, "pyproject.toml must state requires-python and the classifiers"
    assert claimed == list(range(int(floor.group(1)), claimed[-1] + 1))
    assert sys.version_info[:2] in [(3, minor) for minor in claimed], (
        f"Python {sys.version.split()[0]} is not among the tested versions {claimed}")
