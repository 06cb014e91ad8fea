"""LPUSH from many concurrent requests in one round trip (micro-batching, no added delay).

A request hands its Celery message to :meth:`BatchPusher.push` and waits. The first message
starts a flush at once; messages that arrive while that ``LPUSH`` is in flight go together in
the next one. So an idle server pushes each event alone, and a busy one pays one Redis round
trip per batch instead of per event. One multi-value ``LPUSH`` keeps the batch in order, and
Redis applies it whole or not at all: every waiting request learns the same outcome, and none
is answered 200 before Redis has confirmed its event.

The ``LPUSH`` goes out on a connection of its own, packed here: redis-py's command path
(``client.lpush``) costs ~70 us of CPU for a batch of 16 events, the packed command on one
of its connections ~45 us, most of that the kernel's share of writing 20 KB to the socket.
The client keeps the connection settings (TLS, password, database) and answers ``ping``.

With ``REDIS_URL=sentinel://...`` the client is a Sentinel ``master_for`` client: each new
connection asks the sentinels where the master is, and a connection to a master that became a
replica (``READONLY``) is dropped and made again. With ``VOUCHERIFY_REDIS_WAIT_REPLICAS=N`` a
``WAIT N timeout`` goes out right behind each ``LPUSH`` (same packet); fewer than N replicas
raises ``ReplicasNotConfirmed`` and no request of that batch hears 200.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from voucherify_ingest.redis_conn import (
    ReplicasNotConfirmed,
    check_replicas,
    read_timeout_s,
    sentinel_hosts,
    sentinel_kwargs,
    sentinel_master_options,
)
from voucherify_ingest.settings import Settings

MAX_BATCH = 256


def make_async_redis(settings: Settings) -> aioredis.Redis:
    """A client that fails fast (``VOUCHERIFY_REDIS_TIMEOUT_S``), retrying once at once.

    The one retry covers a pooled connection Redis closed while idle; a down Redis is
    reported within about twice the timeout rather than after redis-py's default backoff.
    """
    timeout = settings.redis_timeout_s
    options = {
        "socket_timeout": read_timeout_s(settings, timeout),
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), 1),
        "client_name": "voucherify-ingest-serve",
    }
    if settings.uses_sentinel:
        sentinel = redis.asyncio.sentinel.Sentinel(
            sentinel_hosts(settings.redis_url),
            sentinel_kwargs=sentinel_kwargs(settings, timeout),
            **options,
            **sentinel_master_options(settings.redis_url),
        )
        return sentinel.master_for(settings.redis_sentinel_master)
    return aioredis.Redis.from_url(settings.redis_url, **options)


class BatchPusher:
    """Pushes messages onto ``queue``; ``push`` raises what Redis raised (a ``RedisError``)."""

    def __init__(
        self,
        client: aioredis.Redis,
        queue: str,
        *,
        max_batch: int = MAX_BATCH,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ):
        self.client = client
        self.queue = queue
        self.max_batch = max_batch
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        queue_bytes = queue.encode("utf-8")
        # "*<argc>" is filled in per batch; the command name and key never change.
        self._command = b"\r\n$5\r\nLPUSH\r\n$%d\r\n%s\r\n" % (len(queue_bytes), queue_bytes)
        self._wait = b""
        if wait_replicas > 0:
            n, t = b"%d" % wait_replicas, b"%d" % wait_timeout_ms
            self._wait = b"*3\r\n$4\r\nWAIT\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                len(n), n, len(t), t
            )
        self._connection: Any = None  # one flush at a time: one connection is enough
        self._pending: list[tuple[str, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0  # for tests and the benchmark: round trips made
        self.pushed = 0

    @classmethod
    def for_settings(cls, settings: Settings, queue: str | None = None) -> BatchPusher:
        return cls(
            make_async_redis(settings),
            queue or settings.queue,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=settings.redis_wait_timeout_ms,
        )

    async def push(self, message: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((message, future))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                outcome: BaseException | None = None
                try:
                    await self._lpush([message for message, _ in batch])
                except Exception as exc:  # each waiting request turns it into 503 (or 500)
                    outcome = exc
                except BaseException:  # cancelled while sending: nobody hears 200
                    _settle(batch, _Stopped("the server stopped while enqueueing"))
                    raise
                self.batches += 1
                if outcome is None:
                    self.pushed += len(batch)
                _settle(batch, outcome)
        finally:
            self._flusher = None

    async def _lpush(self, messages: list[str]) -> None:
        """One ``LPUSH`` of ``messages``; once more at once only if sending it failed.

        The second try covers a connection Redis closed while it sat idle; a down Redis is
        reported within about twice ``VOUCHERIFY_REDIS_TIMEOUT_S``. Once the command is sent,
        a timeout leaves its outcome unknown: :class:`PushOutcomeUnknown`, never a second
        push. Redis error replies (such as OOM under ``maxmemory``) are raised
        as ``redis.ResponseError``.
        """
        parts = [b"*%d" % (len(messages) + 2), self._command]
        for message in messages:
            data = message.encode("utf-8")
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        parts.append(self._wait)
        packed = b"".join(parts)
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = self.client.connection_pool.make_connection()
            connection = self._connection
            try:
                if not connection.is_connected:
                    # connect() itself: redis-py's send_packed_command would connect with the
                    # plain method, which skips a Sentinel connection's master lookup.
                    await connection.connect()
                # check_health PINGs a connection idle past health_check_interval first, so a
                # connection Redis closed while idle fails here, before anything is sent.
                await connection.send_packed_command(packed, check_health=True)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._connection = None
                await connection.disconnect(nowait=True)
                if attempt == 2:
                    raise
                continue  # nothing reached Redis whole: sending again cannot duplicate
            try:
                await connection.read_response()
                if self._wait:
                    acked = await connection.read_response()
                    check_replicas(acked, self.wait_replicas, self.wait_timeout_ms)
                return
            except ReplicasNotConfirmed:
                raise  # the LPUSH did reach the master: never pushed again
            except redis.ReadOnlyError:
                # A master turned replica (failover) refused the LPUSH: nothing stored. Connect
                # again, through the sentinels when REDIS_URL is sentinel://.
                self._connection = None
                await connection.disconnect(nowait=True)
                if attempt == 2:
                    raise
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._connection = None
                await connection.disconnect(nowait=True)
                if isinstance(exc, (redis.TimeoutError, TimeoutError)):
                    # Redis has the LPUSH and may apply it: never push it blind again.
                    raise PushOutcomeUnknown(
                        f"{type(exc).__name__} after the LPUSH was sent") from exc
                # Closed by Redis (idle timeout, restart): taken as not applied, as before;
                # were it applied after all, the copy is skipped by the delivery ledger.
                if attempt == 2:
                    raise
            except redis.ResponseError:
                if self._wait:  # the WAIT's reply is still unread: do not reuse the connection
                    self._connection = None
                    await connection.disconnect(nowait=True)
                raise

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (redis.RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=5)
        if self._connection is not None:
            await self._connection.disconnect()
        await self.client.aclose()
        manager = getattr(self.client.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()  # a Sentinel client holds one connection per sentinel


class PushOutcomeUnknown(redis.TimeoutError):
    """The LPUSH was sent but Redis did not confirm it: it may or may not be stored."""


class _Stopped(redis.ConnectionError):
    """The server stopped while a batch was being sent: its outcome is unknown."""


def _settle(batch: list[tuple[str, asyncio.Future[Any]]], error: BaseException | None) -> None:
    for _, future in batch:
        if future.done():  # the request gave up (client went away); its event is still pushed
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
