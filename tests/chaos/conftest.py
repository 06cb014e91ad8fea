"""Chaos-suite fixtures: the size switch and a summary of every scenario's accounting."""

from __future__ import annotations

import pytest

from tests.chaos.accounting import Report
from tests.chaos.harness import event_count
from tests.chaos.remote_standin import RemoteStandIn

_REPORTS: list[Report] = []


@pytest.fixture
def chaos_events() -> int:
    return event_count()


@pytest.fixture
def remote_standin(make_process):
    """The stand-in API in its own process (``RemoteStandIn``)."""
    api = RemoteStandIn(make_process)
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def chaos_report():
    """Call with a ``Report``: it is printed in the terminal summary, pass or fail."""
    return _REPORTS.append


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _REPORTS:
        return
    terminalreporter.section("chaos accounting")
    for report in _REPORTS:
        terminalreporter.write_line(report.summary())
