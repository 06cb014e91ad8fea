"""kombu's Redis transport with two fixes a worker needs: no message lost to a SIGKILL, and no
crash on a message that is not a kombu message.

1. **Taking a message is atomic.** kombu consumes with ``BRPOP`` and only then records the
   message as unacknowledged (``{p}:unacked`` / ``{p}:unacked_index``, a second round trip).
   A worker killed in between (the reply already in its socket buffer, the event loop busy)
   loses that message for good: nothing restores it. Here one Lua script pops the message
   *and* records it as unacknowledged, so from the moment it leaves the queue a dead worker's
   message is restored after the visibility timeout. When the queue is empty the channel waits
   with ``BLMOVE q q RIGHT RIGHT`` (Redis >= 6.2), which blocks until the list has an item and
   leaves it where it was; the next script call takes it.

2. **Unreadable items do not kill the worker.** kombu parses each item it pops and a worker
   dies ("Unrecoverable error") on one that is not JSON, not UTF-8, or not shaped like a kombu
   message. Such an item is wrapped, undecoded, into a small well-formed message for the task
   ``voucherify.unreadable`` (registered nowhere), which ``worker.poison.Consumer`` turns into
   a dead letter with reason ``invalid``.

3. **Lanes in priority order.** With the ``lane_order`` transport option (the lanes' lists, first
   served first; ``worker.app`` sets it), every take looks at the live list before the bulk one,
   instead of kombu's round robin. When every list is empty the channel waits on the live list
   (up to ``LANE_FIRST_WAIT_S``) and then briefly on each other lane (``LANE_OTHER_WAIT_S``),
   so a live event arriving at an idle worker waits at most that long for a blocked read.

Selected by ``broker_transport`` in ``worker.app`` (``SentinelTransport`` for a
``sentinel://`` URL); everything else is kombu's own transport.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

UNREADABLE_TASK = "voucherify.unreadable"
UNREADABLE_CONTENT_TYPE = "application/x-voucherify-unreadable"
UNREADABLE_KEEP_BYTES = 64 * 1024  # of an unreadable item, this much is kept for the dead letter
LANE_FIRST_WAIT_S = 0.5  # idle: block this long on the first lane's list ...
LANE_OTHER_WAIT_S = 0.05  # ... then this long on each other lane's, and take again

# KEYS[1..n-2] = the queue's lists in priority order, KEYS[n-1] = {p}:unacked_index,
# KEYS[n] = {p}:unacked.  ARGV[1] = the worker's clock (kombu scores unacked entries with it).
# Pops the first item found; if it looks like a kombu message, records it as unacked exactly
# as kombu's QoS.append would ([message, exchange, routing_key] under its delivery tag).
# Returns {queue key, item, 1 if recorded else 0}, or nil when every list is empty.
TAKE_LUA = """
local n = #KEYS
for i = 1, n - 2 do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local ok, msg = pcall(cjson.decode, item)
    if ok and type(msg) == 'table' and type(msg.properties) == 'table' then
      local tag = msg.properties.delivery_tag
      local info = msg.properties.delivery_info
      if type(tag) == 'string' and type(info) == 'table'
          and type(info.exchange) == 'string' and type(info.routing_key) == 'string' then
        redis.call('ZADD', KEYS[n - 1], ARGV[1], tag)
        redis.call('HSET', KEYS[n], tag,
          '[' .. item .. ',' .. cjson.encode(info.exchange) .. ','
          .. cjson.encode(info.routing_key) .. ']')
        return {KEYS[i], item, 1}
      end
    end
    return {KEYS[i], item, 0}
  end
end
return nil
"""


def inspect_item(channel: Any, item: bytes) -> tuple[dict | None, str]:
    """``(message dict, "")`` when kombu can consume ``item``, else ``(None, why)``."""
    try:
        payload = loads(bytes_to_str(item))
    except (ValueError, TypeError):
        return None, "not JSON (or not UTF-8)"
    if not isinstance(payload, dict) or not isinstance(payload.get("properties"), dict):
        return None, "JSON but not a kombu message (no properties object)"
    props = payload["properties"]
    info = props.get("delivery_info")
    if not isinstance(props.get("delivery_tag"), str) or not (
        isinstance(info, dict)
        and isinstance(info.get("exchange"), str)
        and isinstance(info.get("routing_key"), str)
    ):
        return None, "kombu message without a delivery tag or delivery info"
    try:
        channel.Message(payload, channel=channel)  # decodes the body as consuming would
    except Exception as exc:  # any failure here would otherwise kill the consumer
        return None, f"kombu message whose body cannot be decoded ({type(exc).__name__})"
    return payload, ""


def unreadable_message(item: bytes, queue: str, why: str, tag: str | None = None) -> dict:
    """A well-formed message carrying ``item`` undecoded, for ``worker.poison`` to file."""
    tag = tag or str(uuid.uuid4())
    return {
        "body": base64.b64encode(item[:UNREADABLE_KEEP_BYTES]).decode("ascii"),
        "content-type": UNREADABLE_CONTENT_TYPE,
        "content-encoding": "binary",
        "headers": {
            "task": UNREADABLE_TASK,
            "id": tag,
            "x-unreadable": why,
            "x-raw-bytes": len(item),
        },
        "properties": {
            "delivery_tag": tag,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "body_encoding": "base64",
            "priority": 0,
        },
    }


def _recorded_tag(item: bytes) -> str | None:
    try:
        tag = json.loads(item)["properties"]["delivery_tag"]
    except (ValueError, TypeError, KeyError):
        return None
    return tag if isinstance(tag, str) else None


class _AtomicTake:
    """The consuming step as one atomic script (see the module docstring); a channel mixin."""

    _wait_next = False  # the last take found nothing: wait for an item before taking again
    _wait_turn = 0  # which lane the next idle wait blocks on
    lane_order: tuple[str, ...] = ()  # queue names, first served first (transport option)
    from_transport_options = kombu_redis.Channel.from_transport_options + ("lane_order",)

    def _in_lane_order(self, queues: list[str]) -> list[str]:
        order = {name: i for i, name in enumerate(self.lane_order)}
        return sorted(queues, key=lambda q: order.get(q, len(order)))

    def _brpop_start(self, timeout=None):
        if self.global_keyprefix:  # not used by this project; keep kombu's own path intact
            return super()._brpop_start(timeout)
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        if self.lane_order:
            queues = self._in_lane_order(queues)
        if self._wait_next:
            turn = self._wait_turn % len(queues) if self.lane_order else 0
            first = self._q_for_pri(queues[turn], 0)
            if self.lane_order and len(queues) > 1:
                self._wait_turn = turn + 1
                timeout = min(timeout or LANE_FIRST_WAIT_S, LANE_FIRST_WAIT_S) if turn == 0 \
                    else LANE_OTHER_WAIT_S
            command = ["BLMOVE", first, first, "RIGHT", "RIGHT", timeout or 0]
        elif self.lane_order:
            keys = [self._q_for_pri(q, pri) for q in queues for pri in self.priority_steps]
            keys += [self.unacked_index_key, self.unacked_key]
            command = ["EVAL", TAKE_LUA, len(keys), *keys, repr(time.time())]
        else:
            keys = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
            keys += [self.unacked_index_key, self.unacked_key]
            command = ["EVAL", TAKE_LUA, len(keys), *keys, repr(time.time())]
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options):
        if self.global_keyprefix:
            return super()._brpop_read(**options)
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if self._wait_next:
                # BLMOVE answered: an item is there (left in place) or the wait timed out;
                # either way the next command is a take (at most one extra per idle second).
                self._wait_next = False
                raise kombu_redis.Empty()
            if not reply:
                self._wait_next = True
                raise kombu_redis.Empty()
            dest, item, recorded = reply
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            message, why = inspect_item(self, item)
            if message is None:
                tag = _recorded_tag(item) if int(recorded) else None
                message = unreadable_message(item, dest, why, tag)
            self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.7
            if flush is not None:
                flush()


class Channel(_AtomicTake, kombu_redis.Channel):
    """kombu's Redis channel with the atomic take."""


class SentinelChannel(_AtomicTake, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel (finds the master through the sentinels on each connection,
    ``master_name`` in the transport options) with the atomic take.

    After a failover Celery reconnects with a new transport, and the late ack of a delivery
    that ran across it arrives on the old, detached channel. kombu reads the sentinel list
    from ``self.connection.client.alt``, which is gone by then ("'NoneType' object has no
    attribute 'client'" killed the worker); ``worker.kombu_fix`` keeps the connection details
    each channel was built with, and they are used here too.
    """

    # The Sentinel options (master_name, ...) and the lanes' order: the mixin's own tuple is
    # the plain channel's, which would drop master_name and leave the worker unable to connect.
    from_transport_options = kombu_redis.SentinelChannel.from_transport_options + ("lane_order",)

    def _sentinel_managed_pool(self, asynchronous=False):
        transport = self.connection
        saved = self.__dict__.get("_voucherify_conninfo")
        if (transport is not None and transport.client is not None) or saved is None:
            return super()._sentinel_managed_pool(asynchronous)
        client, default_port = saved
        self.connection = SimpleNamespace(client=client, default_port=default_port)
        try:
            return super()._sentinel_managed_pool(asynchronous)
        finally:
            self.connection = transport


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """Selected by ``worker.app`` when ``REDIS_URL`` is ``sentinel://...``."""

    Channel = SentinelChannel
