"""``ConcurrencyLimiter``: admit, queue by priority, or refuse, under a ``LatencyLimit``."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iogate.resilience.adaptive.config import AdaptiveConfig, Clock, Priority, RefusalReason
from iogate.resilience.adaptive.limit import LatencyLimit

__all__ = ["ConcurrencyLimiter", "Permit", "Refusal", "Waiter"]

# -- admission -------------------------------------------------------------------------


class Permit:
    """A slot held by one operation; give it back with ``release``."""

    __slots__ = ("generation", "inflight", "priority", "released", "weight")

    def __init__(self, priority: Priority, weight: int, inflight: int, generation: int) -> None:
        self.priority = priority
        self.weight = weight
        self.inflight = inflight
        self.generation = generation
        self.released = False

    def __repr__(self) -> str:
        return f"<Permit {self.priority.label} weight={self.weight}>"


@dataclass(frozen=True, slots=True)
class Refusal:
    """No slot: answer at once (HTTP 503 + Retry-After)."""

    reason: RefusalReason
    priority: Priority
    limit: int
    queued: int


class Waiter:
    """A request in the queue; ``on_ready`` gets its Permit or Refusal."""

    __slots__ = ("enqueued_at", "on_ready", "outcome", "priority", "weight")

    def __init__(self, priority: Priority, weight: int, enqueued_at: float) -> None:
        self.priority = priority
        self.weight = weight
        self.enqueued_at = enqueued_at
        self.outcome: Permit | Refusal | None = None
        self.on_ready: Callable[[Permit | Refusal], None] | None = None

    def __repr__(self) -> str:
        return f"<Waiter {self.priority.label} weight={self.weight} outcome={self.outcome}>"


class ConcurrencyLimiter:
    """Admission for one resource: slots from a :class:`LatencyLimit`, a
    priority queue, and counters for ``/stats``."""

    def __init__(
        self, config: AdaptiveConfig, *, name: str = "", clock: Clock = time.monotonic
    ) -> None:
        self.name = name
        self.config = config
        self.limit = LatencyLimit(config, clock=clock)
        self._clock = clock
        self.inflight = 0
        self.queued = 0
        # One FIFO per priority; an entry that left (timed out, cancelled)
        # stays until it reaches the front, flagged by its outcome.
        self._queues: tuple[deque[Waiter], ...] = tuple(deque() for _ in Priority)
        self.admitted = 0
        self.refused: dict[tuple[Priority, RefusalReason], int] = {}
        self.on_limit_change: Callable[[ConcurrencyLimiter], None] | None = None

    def __repr__(self) -> str:
        return (
            f"<ConcurrencyLimiter {self.name!r} slots={self.limit.slots} inflight={self.inflight} "
            f"queued={self.queued} admitted={self.admitted} refused={sum(self.refused.values())}>"
        )

    # -- requests -----------------------------------------------------------------

    def try_acquire(
        self, priority: Priority = Priority.NORMAL, weight: int = 1
    ) -> Permit | Waiter | Refusal:
        """A Permit now, a Waiter to wait on, or a Refusal."""
        slots = self.limit.slots
        weight = max(1, min(weight, slots))
        now = self._clock()
        if self.queued:
            self._expire(now)
        ahead = self._weight_ahead(priority) if self.queued else 0
        if ahead == 0 and self.inflight + weight <= slots:
            return self._admit(priority, weight)
        self.limit.saturated()
        service = self.limit.expected_service()
        if service is not None:
            expected_wait = (ahead + weight) / (slots + 1) * service
            if expected_wait > self.limit.queue_timeout():
                return self._refusal(priority, RefusalReason.QUEUE_TIME)
        if self.queued >= self.config.max_queue and not self._displace(priority):
            return self._refusal(priority, RefusalReason.QUEUE_FULL)
        waiter = Waiter(priority, weight, now)
        self._queues[priority].append(waiter)
        self.queued += 1
        return waiter

    def release(self, permit: Permit, latency: float | None = None) -> None:
        """Give the slot back; ``latency`` (seconds) trains the limit, None
        (cancelled, or not one operation's latency) does not."""
        if permit.released:
            return
        permit.released = True
        self.inflight -= permit.weight
        moved = latency is not None and self.limit.record(
            latency, permit.inflight, permit.generation
        )
        if moved and self.on_limit_change is not None:
            self.on_limit_change(self)
        if self.queued:
            self._expire(self._clock())
            self._wake()

    def abandon(self, waiter: Waiter, *, refuse: bool = True) -> Permit | Refusal:
        """The waiter stops waiting: its time is up, or (``refuse=False``,
        not counted as a refusal) it was cancelled.

        Returns its Permit if a slot was handed to it meanwhile (the caller
        runs or releases it), else the QUEUE_TIME Refusal it leaves with."""
        if waiter.outcome is not None:
            return waiter.outcome
        self.queued -= 1
        if refuse:
            refusal = self._refusal(waiter.priority, RefusalReason.QUEUE_TIME)
        else:
            refusal = Refusal(RefusalReason.QUEUE_TIME, waiter.priority, self.limit.slots, 0)
        waiter.outcome = refusal
        # A waiter at the front that leaves may unblock the ones behind it.
        self._wake()
        return refusal

    def expire(self) -> None:
        """Refuse every waiter past the queue-time cap (also done on every call)."""
        if self.queued:
            self._expire(self._clock())

    # -- reading ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        limit = self.limit
        refused: dict[str, int] = {}
        for (_, reason), count in self.refused.items():
            refused[reason.value] = refused.get(reason.value, 0) + count
        return {
            "limit": limit.slots,
            "inflight": self.inflight,
            "queued": self.queued,
            "baseline_ms": None if limit.baseline is None else round(limit.baseline * 1000, 3),
            "latency_ms": None if limit.latency is None else round(limit.latency * 1000, 3),
            "queue_timeout_ms": round(limit.queue_timeout() * 1000, 3),
            "admitted": self.admitted,
            "refused": refused,
            "min_limit": self.config.min_limit,
            "max_limit": self.config.max_limit,
        }

    # -- internals ----------------------------------------------------------------

    def _admit(self, priority: Priority, weight: int) -> Permit:
        self.inflight += weight
        self.admitted += 1
        return Permit(priority, weight, self.inflight, self.limit.generation)

    def _refusal(self, priority: Priority, reason: RefusalReason) -> Refusal:
        key = (priority, reason)
        self.refused[key] = self.refused.get(key, 0) + 1
        return Refusal(reason, priority, self.limit.slots, self.queued)

    def _weight_ahead(self, priority: Priority) -> int:
        """Queued weight that goes before a new request of ``priority``."""
        total = 0
        for queue in self._queues[: priority + 1]:
            for waiter in queue:
                if waiter.outcome is None:
                    total += waiter.weight
        return total

    def _displace(self, priority: Priority) -> bool:
        """Refuse the newest waiter of the lowest priority below ``priority``."""
        for lower in reversed(self._queues[priority + 1 :]):
            while lower:
                waiter = lower.pop()
                if waiter.outcome is None:
                    self.queued -= 1
                    self._settle(waiter, self._refusal(waiter.priority, RefusalReason.QUEUE_FULL))
                    return True
        return False

    def _expire(self, now: float) -> None:
        oldest = now - self.limit.queue_timeout()
        for queue in self._queues:
            while queue and (queue[0].outcome is not None or queue[0].enqueued_at < oldest):
                waiter = queue.popleft()
                if waiter.outcome is None:
                    self.queued -= 1
                    self._settle(waiter, self._refusal(waiter.priority, RefusalReason.QUEUE_TIME))

    def _wake(self) -> None:
        """Hand free slots to waiters, highest priority first, in order."""
        slots = self.limit.slots
        for queue in self._queues:
            while queue:
                waiter = queue[0]
                if waiter.outcome is not None:
                    queue.popleft()
                    continue
                weight = min(waiter.weight, slots)
                if self.inflight + weight > slots:
                    return  # nobody behind it, nor of a lower priority, may pass it
                queue.popleft()
                self.queued -= 1
                self._settle(waiter, self._admit(waiter.priority, weight))
            # This priority is empty: a lower one may use what is left.

    def _settle(self, waiter: Waiter, outcome: Permit | Refusal) -> None:
        waiter.outcome = outcome
        if waiter.on_ready is not None:
            waiter.on_ready(outcome)
