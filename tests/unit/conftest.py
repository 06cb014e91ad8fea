"""Fixtures of the unit layer (no Redis): a stand-in API on loopback for the HTTP client."""

from __future__ import annotations

import pytest

from voucherify_ingest.standin import StandIn


@pytest.fixture
def api():
    """A started stand-in for app ``app`` with token ``token-123456``."""
    server = StandIn("app", "token-123456").start()
    yield server
    server.stop()
