"""Gateways that share their state through Redis: ``[gateway] shared_state``.

Several gateway processes (``iogate serve --workers N``, or N gateways behind
a load balancer) are stateless apart from what this module shares through
the Redis named by ``shared_state``:

- rate limits: every configured ``rate_limit`` is counted in Redis
  (:func:`rate_limit_storage`; ``iogate.resilience.ratelimit`` counts locally
  while Redis is down);
- cache invalidations: every ``delete`` on a ``memory`` database (the named
  operations' tag invalidations included) is published on
  ``iogate:invalidate``; the other processes delete the same keys, and for a
  tag set (``iogate:tag:...``) the entries their own set lists. A process
  that lost its subscription (Redis down) may have missed some, so when it
  subscribes again it drops its cached named-operation entries (keys under
  ``iogate:``), never the rest of a memory database;
- breaker openings: a breaker that opens on its own evidence is published on
  ``iogate:breaker``; the others open theirs for the same resource when the
  message is fresh, under the rules of ``CircuitBreaker.open_for_peer``
  (each process still decides: its own half-open probe closes it);
- statistics: each process publishes its ``/stats`` snapshot every second
  and ``/stats`` answers with their aggregate and a ``workers`` list
  (:mod:`iogate.gateway.worker_stats`; :class:`GatewaySharing` wires both for
  an app's lifespan).

A process ignores its own messages, and messages from a deployment on
another Redis database number (pub/sub channels are server-wide). Nothing
here can fail a request: publishing is queued and bounded, and every Redis
call has a deadline. Written here rather than taken from a library: what is
shared (memory-cache keys, breaker openings) is iogate's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from iogate.core.deadline import Deadline
from iogate.gateway.peers import BREAKER_CHANNEL, INVALIDATE_CHANNEL, PEER_MAX_AGE, PeerLink
from iogate.gateway.worker_stats import FileStatsBoard, RedisStatsBoard, StatsBoard, WorkerStats
from iogate.resilience.retry import backoff_delay

if TYPE_CHECKING:
    from iogate.backends.redis import AsyncRedisManager
    from iogate.gateway.settings import Settings
    from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator

__all__ = [
    "BREAKER_CHANNEL",
    "INVALIDATE_CHANNEL",
    "PEER_MAX_AGE",
    "GatewaySharing",
    "PeerLink",
    "SharedState",
    "memory_cache_warning",
    "rate_limit_storage",
    "rate_limit_warning",
]

logger = logging.getLogger("iogate.gateway.shared_state")

# Every Redis call made here: connect and answer within this many seconds.
REDIS_TIMEOUT = 1.0
_LISTEN_POLL = 1.0  # seconds the subscriber waits for a message before waiting again
_MAX_QUEUED = 1000  # messages waiting to be published; the oldest are dropped


def rate_limit_storage(shared_state: str) -> str | None:
    """The ``limits`` storage URI for a ``shared_state`` Redis URL (None when empty)."""
    if not shared_state:
        return None
    if shared_state.startswith("unix://"):
        return "async+redis+unix://" + shared_state.removeprefix("unix://")
    return "async+" + shared_state


def memory_cache_warning(settings: Settings, *, workers: int) -> str | None:
    """Why ``memory`` databases will serve stale reads, or None when they will not."""
    if settings.gateway.shared_state or workers < 2:
        return None
    names = sorted(n for n, db in settings.databases.items() if db.type == "memory")
    if not names:
        return None
    return (
        f"databases {', '.join(names)}: a memory database is per process, so with "
        f"{workers} workers a cache entry invalidated in one may still be served by "
        "another; set [gateway] shared_state to a Redis URL to broadcast invalidations "
        "(or use a redis cache)"
    )


def rate_limit_warning(settings: Settings, *, workers: int) -> str | None:
    """Why API ``rate_limit``s will admit more than configured, or None when they will not."""
    if settings.gateway.shared_state or workers < 2:
        return None
    limits = sorted((n, api.rate_limit) for n, api in settings.apis.items() if api.rate_limit)
    if not limits:
        return None
    named = ", ".join(f"{name} ({limit})" for name, limit in limits)
    return (
        f"apis {named}: a rate_limit is counted per process, so with {workers} workers "
        f"each admits the full limit (up to {workers} times it in all); set [gateway] "
        "shared_state to a Redis URL to count it once across every worker"
    )


def _redis_db(url: str) -> str:
    path = urlsplit(url).path.strip("/")
    return path or "0"


# -- the Redis side -------------------------------------------------------------------------


class SharedState:
    """A :class:`PeerLink` over Redis pub/sub, for one app's lifespan.

    ``async with SharedState(url) as shared: shared.attach(orchestrator)``.
    Publishing never blocks a request: messages are queued (at most
    ``_MAX_QUEUED``) and sent by one task; an invalidation that cannot be
    sent waits for Redis to come back, a breaker opening is dropped (it
    would be stale by then). The subscriber reconnects with backoff.
    """

    def __init__(self, url: str, *, origin: str | None = None) -> None:
        from iogate.backends.redis import AsyncRedisManager

        self.url = url
        self.redis: AsyncRedisManager = AsyncRedisManager(
            url,
            name="shared_state",
            connect_timeout=REDIS_TIMEOUT,
            command_timeout=REDIS_TIMEOUT,
        )
        self.link = PeerLink(self._queue, origin=origin, scope=_redis_db(url))
        self._outbox: deque[tuple[str, dict[str, Any]]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.subscribed = asyncio.Event()
        self.dropped = 0

    def __repr__(self) -> str:
        return (
            f"<SharedState {self.link.origin!r} subscribed={self.subscribed.is_set()} "
            f"queued={len(self._outbox)} dropped={self.dropped}>"
        )

    async def __aenter__(self) -> SharedState:
        self._tasks = [
            asyncio.create_task(self._listen(), name="iogate-shared-listen"),
            asyncio.create_task(self._publish_queued(), name="iogate-shared-publish"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def attach(self, orchestrator: AsyncOperationOrchestrator) -> None:
        self.link.attach(orchestrator)

    async def aclose(self) -> None:
        """Stop listening and publishing; idempotent. Queued messages are dropped."""
        self.link.detach()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.redis.close()

    def snapshot(self) -> dict[str, Any]:
        return {
            "subscribed": self.subscribed.is_set(),
            "queued": len(self._outbox),
            "dropped": self.dropped,
            **self.link.counts,
        }

    def _queue(self, channel: str, message: dict[str, Any]) -> None:
        if len(self._outbox) >= _MAX_QUEUED:
            self._outbox.popleft()
            self.dropped += 1
        self._outbox.append((channel, message))
        self._wake.set()

    def _receive(self, channel: str, payload: str) -> None:
        try:
            self.link.receive(channel, payload)
        except Exception:  # a bug applying one message must not end the subscription
            logger.exception("shared state: a message on %s could not be applied", channel)

    async def _publish_queued(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                channel, message = self._outbox[0]
                result = await self.redis.execute_query(
                    channel,
                    {
                        "operation": "publish",
                        "channel": channel,
                        "message": orjson.dumps(message).decode(),
                    },
                    deadline=Deadline(REDIS_TIMEOUT),
                )
                if result.success:
                    self._outbox.popleft()
                    if failures:
                        logger.info("shared state: publishing to redis again")
                    failures = 0
                    continue
                failures += 1
                if failures == 1:
                    logger.warning(
                        "shared state: cannot publish to redis (%s); other gateways will "
                        "hear of this process's invalidations when it is back",
                        result.error,
                    )
                # Breaker openings go stale; invalidations wait for Redis.
                kept = [(c, m) for c, m in self._outbox if c == INVALIDATE_CHANNEL]
                self.dropped += len(self._outbox) - len(kept)
                self._outbox = deque(kept)
                await asyncio.sleep(_backoff(failures))

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                async with self.redis.subscribe(INVALIDATE_CHANNEL, BREAKER_CHANNEL) as sub:
                    if failures:
                        dropped = self.link.drop_cached_entries()
                        logger.info(
                            "shared state: subscribed again; dropped %d cached entries "
                            "whose invalidation may have been missed",
                            dropped,
                        )
                    failures = 0
                    self.subscribed.set()
                    while True:
                        message = await sub.get(timeout=_LISTEN_POLL)
                        if message is not None:
                            self._receive(*message)
            except Exception as exc:  # iogate's errors, or a bug: subscribe again
                self.subscribed.clear()
                failures += 1
                if failures == 1:
                    logger.warning(
                        "shared state: not subscribed to redis (%s); invalidations and "
                        "breaker openings stay local until it is back",
                        exc,
                    )
            await asyncio.sleep(_backoff(failures))


def _backoff(failures: int) -> float:
    return max(0.05, backoff_delay(failures, initial=0.1, maximum=5.0))


class GatewaySharing:
    """What one gateway app shares with the other processes, for its lifespan.

    With ``shared_state``: a :class:`SharedState` hooked to the orchestrator
    and stats on a :class:`RedisStatsBoard`; without it but with
    ``metrics_dir`` (``--workers``): stats on a :class:`FileStatsBoard`;
    otherwise only this process's stats, with a one-entry ``workers`` list.
    ``snapshot`` returns this process's ``/stats`` body.
    """

    def __init__(
        self,
        shared_state: str,
        snapshot: Callable[[], dict[str, Any]],
        *,
        metrics_dir: str | None = None,
    ) -> None:
        self.shared = SharedState(shared_state) if shared_state else None
        board: StatsBoard | None = None
        if self.shared is not None:
            board = RedisStatsBoard(self.shared.redis)
        elif metrics_dir is not None:
            board = FileStatsBoard(metrics_dir)
        self._snapshot = snapshot
        self.stats = WorkerStats(board, snapshot)
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<GatewaySharing shared={self.shared!r} {self.stats!r}>"

    async def start(self, orchestrator: AsyncOperationOrchestrator) -> None:
        if self.shared is not None:
            await self.shared.__aenter__()
            self.shared.attach(orchestrator)
        self._task = asyncio.create_task(self.stats.run(), name="iogate-worker-stats")

    async def aclose(self) -> None:
        """Stop publishing and listening; idempotent, bounded."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.shared is not None:
            await self.shared.aclose()

    async def stats_body(self, own: dict[str, Any]) -> dict[str, Any]:
        """``/stats``: every worker's aggregate, ``workers``, and the link's counters."""
        body = await self.stats.gather(own)
        if self.shared is not None:
            body["shared_state"] = self.shared.snapshot()
        return body

    def history_sample(self) -> dict[str, Any]:
        """The dashboard history's sample: every worker's aggregate, no I/O."""
        return self.stats.aggregate_now(self._snapshot())
