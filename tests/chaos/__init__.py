"""Chaos suite: real Redis, real worker processes, the loopback stand-in API, things broken
on purpose. Each scenario ends with :func:`tests.chaos.accounting.account`.

    .venv/bin/python -m pytest tests/chaos -q                              # 5,000 events each
    VOUCHERIFY_CHAOS_LONG=1 .venv/bin/python -m pytest tests/chaos -q      # 50,000 events each
    VOUCHERIFY_CHAOS_EVENTS=20000 .venv/bin/python -m pytest tests/chaos   # any size
"""
