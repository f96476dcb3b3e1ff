"""Adaptive concurrency: a latency-driven limit on concurrent operations.

A resource (a database, an API) serves some number of operations at once
before each one starts waiting for the others: connections in a pool, cores
of a database server, a rate an upstream sustains. Past that knee, more
concurrency only adds queueing -- latency grows, throughput does not. A fixed
limit must be guessed and goes stale; this one is learned from latency, in
the family of TCP Vegas, Netflix's concurrency-limits and Envoy's adaptive
concurrency filter:

- completions are sampled in windows (at least ``window`` seconds and
  ``min_samples`` operations, fewer for small limits: 3 per slot, at least
  5), leaving out operations admitted before the limit last moved; each
  window's median latency is compared with the **baseline**, the median
  latency of the resource when it is not queueing;
- above ``tolerance`` x baseline, the resource is queueing: the limit is cut
  in proportion (latency grows with the queue, so ``limit * target / latency``
  aims at the target at once; never by more than half per window);
- near the baseline, and only if the limit actually held work back in that
  window, it grows: x1.5 until the first cut (a "slow start" from
  ``initial_limit``, ``min_limit`` by default), then a slot at a time
  (log10 of the limit for large limits, as Vegas);
- between the two it holds.

The baseline is learned at low concurrency: the first window, and any window
that ran with no more than ``min_limit`` operations at once, sets it; a lower
median lowers it. A resource that became slower for good (bigger data, a
heavier query mix) is first taken for an overloaded one: the limit falls to
``min_limit``, where the latency measured is no-load latency again, which
resets the baseline -- a probe that happens only when it is needed, instead
of Envoy's periodic one.

Past the limit, work waits in a bounded queue ordered by :class:`Priority`
(interactive before normal before batch; first come, first served within
one): at most ``max_queue`` waiters, and at most the **queue-time cap** each:
``max_queue_time`` when given, else a quarter of the baseline latency (at
most ``DEFAULT_MAX_QUEUE_TIME``), so a waiter never waits longer than a
fraction of what the operation itself takes. A request is refused at once,
without queueing, when the queue is full (a higher-priority arrival takes
the place of the newest lowest-priority waiter instead) or when its expected
wait exceeds the cap: with ``slots`` operations running, the first of them
ends after about ``latency / (slots + 1)``, so the k-th in line waits about
``k`` times that.

Everything here is bookkeeping on an injected clock, with no I/O and no
event loop: :class:`ConcurrencyLimiter` answers each request with a
:class:`Permit`, a :class:`Waiter` (to be woken through ``on_ready``) or a
:class:`Refusal`. ``iogate.gateway.admission`` puts it on an event loop.
"""

from iogate.resilience.adaptive.admission import ConcurrencyLimiter, Permit, Refusal, Waiter
from iogate.resilience.adaptive.config import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_TIME,
    DEFAULT_MIN_SAMPLES,
    DEFAULT_TOLERANCE,
    DEFAULT_WINDOW,
    QUEUE_TIME_RATIO,
    AdaptiveConfig,
    Priority,
    RefusalReason,
)
from iogate.resilience.adaptive.limit import LatencyLimit

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_QUEUE_TIME",
    "DEFAULT_MIN_SAMPLES",
    "DEFAULT_TOLERANCE",
    "DEFAULT_WINDOW",
    "QUEUE_TIME_RATIO",
    "AdaptiveConfig",
    "ConcurrencyLimiter",
    "LatencyLimit",
    "Permit",
    "Priority",
    "Refusal",
    "RefusalReason",
    "Waiter",
]
