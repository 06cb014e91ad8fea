"""The operator dashboard: a web page over Redis for the flow and the dead letters.

- ``auth``: HTTP Basic users (constant-time), CSRF tokens, the same-origin check.
- ``overview``: the overview's numbers (``FlowReader`` plus an hour of per-minute counts).
- ``letters``: dead-letter filters, listing, search and the actions (``DeadLetterQueue``).
- ``pages``: the HTML, every value escaped.
- ``server``: the ``http.server`` handler and routes.

Like ``metrics`` it only reads Redis (and, for actions, the dead-letter store): no Voucherify
token is needed, and several can run side by side.
"""

from voucherify_ingest.dashboard.server import Dashboard, make_server

__all__ = ["Dashboard", "make_server"]
