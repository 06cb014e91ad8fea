"""A real browser for page tests: Debian's chromium driven by Playwright for Python.

Playwright's own browser download is not used (nor reachable here): the system ``chromium`` is
launched by path. A missing chromium or Playwright FAILS the tests that need them (no skip):
``.ci/run`` installs chromium with apt, Playwright comes with the ``test`` extra.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CLI = [sys.executable, "-m", "voucherify_ingest.cli"]
USER, PASSWORD = "oncall", "dash-pw-9f3c1e"  # noqa: S105 - test credentials
URL_LINE = re.compile(r'"url": "(http://127\.0\.0\.1:\d+/)"')


def chromium_path() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run does this)")
    return found


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                      args=["--no-sandbox", "--disable-gpu"])


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def start_dashboard(make_process: Callable, env: dict, *args: str, name: str = "dashboard"):
    """A ``voucherify-ingest dashboard`` process on a free port; returns (process, base URL)."""
    env = {"VOUCHERIFY_DASHBOARD_CREDENTIALS": f"{USER}:{PASSWORD}", **env}
    proc = make_process([*CLI, "dashboard", "--port", "0", "--refresh", "0.5", *args], env=env,
                        name=name)
    line = proc.wait_for_output(URL_LINE, timeout=30)
    return proc, URL_LINE.search(line).group(1)
