"""Adaptive concurrency (resilience/adaptive.py) with fakes and an injected clock.

The limit's moves are driven window by window with chosen latencies; the
queue's rules with a fake clock; and the whole limiter against a simulated
resource (a pool of connections served first come, first served), which
checks the overload targets -- admitted p99 within 2x the unloaded p99,
goodput at least 90 % of capacity -- on the model, deterministically.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from iogate.core.deadline import Deadline
from iogate.core.errors import ConfigError
from iogate.gateway.admission import Admission, LoopLag, Overloaded, admitted
from iogate.gateway.settings import parse_settings
from iogate.resilience.adaptive import (
    QUEUE_TIME_RATIO,
    AdaptiveConfig,
    ConcurrencyLimiter,
    LatencyLimit,
    Permit,
    Priority,
    Refusal,
    RefusalReason,
    Waiter,
)
from tests.fakes import FakeClock


def config(**options: object) -> AdaptiveConfig:
    base: dict[str, object] = {"window": 0.1, "min_samples": 10}
    return AdaptiveConfig(**{**base, **options})  # type: ignore[arg-type]


def window(
    limit: LatencyLimit,
    clock: FakeClock,
    latency: float,
    *,
    inflight: int | None = None,
    saturated: bool = True,
) -> None:
    """One full window of samples at ``latency``, run at ``inflight``: a
    sample every window/min_samples seconds until the window closes."""
    running = limit.slots if inflight is None else inflight
    if saturated:
        limit.saturated()
    for _ in range(limit.config.min_samples):
        clock.now += limit.config.window / limit.config.min_samples * 1.001
        if limit.record(latency, running):
            return
    pytest.fail("the window did not close")


# -- the limit ---------------------------------------------------------------------------


def test_the_limit_grows_while_latency_stays_at_the_baseline() -> None:
    clock = FakeClock()
    limit = LatencyLimit(config(max_limit=100), clock=clock)
    assert limit.slots == 1  # slow start from min_limit
    window(limit, clock, 0.010)
    assert limit.baseline == pytest.approx(0.010)
    seen = [limit.slots]
    for _ in range(5):
        window(limit, clock, 0.010)
        seen.append(limit.slots)
    assert seen == [2, 3, 4, 6, 10, 15]  # x1.5 (at least +1) until the first cut


def test_the_limit_shrinks_in_proportion_when_latency_rises() -> None:
    clock = FakeClock()
    limit = LatencyLimit(config(initial_limit=40, max_limit=100), clock=clock)
    window(limit, clock, 0.010, inflight=1, saturated=False)  # unloaded: the baseline
    window(limit, clock, 0.020)  # twice the baseline at 40 in flight
    # Aims at tolerance x baseline: 40 * (0.0125 + 0.0005 floor) / 0.020 = 26.
    assert limit.slots == 26
    assert limit.decreases == 1
    window(limit, clock, 0.100)  # never more than halved in one window
    assert limit.slots == 13
    # After a cut, growth is additive (a slot at a time here), not x1.5.
    window(limit, clock, 0.010)
    assert limit.slots == 14


def test_latency_between_the_bands_holds_the_limit() -> None:
    clock = FakeClock()
    limit = LatencyLimit(config(initial_limit=10), clock=clock)
    window(limit, clock, 0.010, inflight=1, saturated=False)
    before = limit.limit
    window(limit, clock, 0.0120)  # above the growth band, below tolerance
    assert limit.limit == before


def test_no_growth_without_demand() -> None:
    clock = FakeClock()
    limit = LatencyLimit(config(initial_limit=4), clock=clock)
    for _ in range(5):
        window(limit, clock, 0.010, inflight=2, saturated=False)
    assert limit.slots == 4


def test_never_below_min_nor_above_max() -> None:
    clock = FakeClock()
    limit = LatencyLimit(config(min_limit=3, max_limit=12), clock=clock)
    for _ in range(10):
        window(limit, clock, 0.010)
    assert limit.slots == 12
    for _ in range(10):
        window(limit, clock, 1.0, inflight=12)
    assert limit.slots == 3


def test_a_resource_slower_for_good_is_relearned_at_min_limit() -> None:
    """Min-tracking alone would take a slower resource for an overloaded
    one for ever; at min_limit the latency is unloaded latency again."""
    clock = FakeClock()
    limit = LatencyLimit(config(initial_limit=20, max_limit=50), clock=clock)
    window(limit, clock, 0.010, inflight=1, saturated=False)
    for _ in range(20):  # the query now takes 40 ms whatever the concurrency
        window(limit, clock, 0.040, inflight=min(limit.slots, 20))
    assert limit.baseline == pytest.approx(0.040)
    assert limit.slots > 1  # growing again


def test_small_latency_differences_under_the_floor_are_noise() -> None:
    clock = FakeClock()
    limit = LatencyLimit(config(initial_limit=10, latency_floor=0.001), clock=clock)
    window(limit, clock, 0.0001, inflight=1)
    window(limit, clock, 0.0005)  # 5x, but 0.4 ms: not queueing
    assert limit.decreases == 0


def test_a_window_closes_on_time_and_samples() -> None:
    clock = FakeClock()
    limit = LatencyLimit(config(min_samples=10, window=1.0, initial_limit=10), clock=clock)
    for _ in range(50):  # many samples, no time passing: the window stays open
        assert not limit.record(0.01, 1)
    clock.now += 1.0
    assert limit.record(0.01, 1)
    for _ in range(9):  # time passing, too few samples: open
        clock.now += 1.0
        assert not limit.record(0.01, 1)
    assert limit.record(0.01, 1)


def test_small_limits_close_windows_on_fewer_samples() -> None:
    """3 per slot, at least 5: a limit of 1 on a 100 ms statement moves
    after half a second, not after min_samples x 100 ms."""
    clock = FakeClock()
    limit = LatencyLimit(config(min_samples=20, window=0.1), clock=clock)
    for _ in range(4):
        clock.now += 0.1
        assert not limit.record(0.1, 1)
    clock.now += 0.1
    assert limit.record(0.1, 1)


def test_samples_from_before_a_move_are_left_out() -> None:
    clock = FakeClock()
    limiter = ConcurrencyLimiter(config(min_samples=10, initial_limit=4), clock=clock)
    old = [limiter.try_acquire() for _ in range(4)]
    assert all(isinstance(p, Permit) for p in old)
    limit = limiter.limit
    window(limit, clock, 0.010, inflight=1, saturated=False)
    limit.saturated()
    window(limit, clock, 0.010)  # slow start: the limit moves, a new generation
    assert limit.generation == 1
    before = (limit.limit, len(limit._samples))
    for permit in old:  # admitted under the old limit: ignored, however slow
        assert isinstance(permit, Permit)
        clock.now += 1
        limiter.release(permit, 5.0)
    assert (limit.limit, len(limit._samples)) == before


# -- the queue ---------------------------------------------------------------------------


@dataclass
class Woken:
    outcomes: list[tuple[str, Permit | Refusal]] = field(default_factory=list)

    def on(self, waiter: Waiter, tag: str) -> Waiter:
        waiter.on_ready = lambda outcome: self.outcomes.append((tag, outcome))
        return waiter


def fixed(clock: FakeClock, slots: int, **options: object) -> ConcurrencyLimiter:
    return ConcurrencyLimiter(
        config(min_limit=slots, max_limit=slots, **options), name="db", clock=clock
    )


def test_permits_up_to_the_limit_then_queue() -> None:
    clock = FakeClock()
    limiter = fixed(clock, 2)
    a, b = limiter.try_acquire(), limiter.try_acquire()
    assert isinstance(a, Permit)
    assert isinstance(b, Permit)
    waiter = limiter.try_acquire()
    assert isinstance(waiter, Waiter)
    assert (limiter.inflight, limiter.queued) == (2, 1)
    woken = Woken()
    woken.on(waiter, "w")
    limiter.release(a, 0.01)
    assert woken.outcomes
    assert isinstance(woken.outcomes[0][1], Permit)
    assert (limiter.inflight, limiter.queued) == (2, 0)


def test_the_queue_is_bounded() -> None:
    clock = FakeClock()
    limiter = fixed(clock, 1, max_queue=3)
    assert isinstance(limiter.try_acquire(), Permit)
    for _ in range(3):
        assert isinstance(limiter.try_acquire(), Waiter)
    refused = limiter.try_acquire()
    assert isinstance(refused, Refusal)
    assert refused.reason is RefusalReason.QUEUE_FULL
    assert limiter.queued == 3
    assert limiter.snapshot()["refused"] == {"queue_full": 1}


def test_max_queue_zero_never_queues() -> None:
    limiter = fixed(FakeClock(), 1, max_queue=0)
    limiter.try_acquire()
    refused = limiter.try_acquire()
    assert isinstance(refused, Refusal)
    assert refused.reason is RefusalReason.QUEUE_FULL


def test_a_higher_priority_takes_the_place_of_the_newest_lowest() -> None:
    clock = FakeClock()
    limiter = fixed(clock, 1, max_queue=2)
    limiter.try_acquire()
    woken = Woken()
    first = woken.on(limiter.try_acquire(Priority.BATCH), "batch-1")  # type: ignore[arg-type]
    woken.on(limiter.try_acquire(Priority.BATCH), "batch-2")  # type: ignore[arg-type]
    interactive = limiter.try_acquire(Priority.INTERACTIVE)
    assert isinstance(interactive, Waiter)
    assert [tag for tag, _ in woken.outcomes] == ["batch-2"]
    refusal = woken.outcomes[0][1]
    assert isinstance(refusal, Refusal)
    assert refusal.reason is RefusalReason.QUEUE_FULL
    assert first.outcome is None  # the older batch waiter keeps its place
    # The same priority displaces nobody.
    assert isinstance(limiter.try_acquire(Priority.BATCH), Refusal)


def test_queue_time_cap_refuses_a_waiter_that_waited_too_long() -> None:
    clock = FakeClock()
    limiter = fixed(clock, 1, max_queue_time=0.2)
    held = limiter.try_acquire()
    assert isinstance(held, Permit)
    woken = Woken()
    woken.on(limiter.try_acquire(), "late")  # type: ignore[arg-type]
    clock.now += 0.19
    limiter.expire()
    assert woken.outcomes == []
    clock.now += 0.02
    limiter.release(held)  # the slot frees after the cap: the waiter is refused, not admitted
    (_tag, outcome), *_ = woken.outcomes
    assert isinstance(outcome, Refusal)
    assert outcome.reason is RefusalReason.QUEUE_TIME
    assert limiter.inflight == 0
    assert limiter.queued == 0


def test_queue_time_cap_is_a_quarter_of_the_baseline_at_most() -> None:
    clock = FakeClock()
    limiter = ConcurrencyLimiter(config(), clock=clock)
    assert limiter.limit.queue_timeout() == 1.0  # nothing learned yet
    for _ in range(10):
        clock.now += 0.011
        p = limiter.try_acquire()
        assert isinstance(p, Permit)
        limiter.release(p, 0.040)
    assert limiter.limit.baseline == pytest.approx(0.040)
    assert limiter.limit.queue_timeout() == pytest.approx(QUEUE_TIME_RATIO * 0.040)


def test_a_wait_expected_past_the_cap_is_refused_at_once() -> None:
    clock = FakeClock()
    limiter = ConcurrencyLimiter(config(min_limit=3, max_limit=3), clock=clock)
    for _ in range(10):  # baseline 100 ms: the cap is 25 ms
        clock.now += 0.011
        p = limiter.try_acquire()
        assert isinstance(p, Permit)
        limiter.release(p, 0.100)
    assert limiter.limit.queue_timeout() == pytest.approx(0.025)
    held = [limiter.try_acquire() for _ in range(3)]
    assert all(isinstance(p, Permit) for p in held)
    # First in line: the first of 3 running operations ends in ~100/4 = 25 ms.
    assert isinstance(limiter.try_acquire(), Waiter)
    # Second: ~50 ms away, past the 25 ms cap: refused now, not in 25 ms.
    refused = limiter.try_acquire()
    assert isinstance(refused, Refusal)
    assert refused.reason is RefusalReason.QUEUE_TIME
    # An interactive request goes before the normal waiters: first in its line.
    assert isinstance(limiter.try_acquire(Priority.INTERACTIVE), Waiter)


def test_priorities_order_the_queue() -> None:
    clock = FakeClock()
    limiter = fixed(clock, 1)
    held = limiter.try_acquire()
    assert isinstance(held, Permit)
    woken = Woken()
    for tag, priority in [
        ("batch-1", Priority.BATCH),
        ("normal-1", Priority.NORMAL),
        ("batch-2", Priority.BATCH),
        ("interactive-1", Priority.INTERACTIVE),
        ("normal-2", Priority.NORMAL),
        ("interactive-2", Priority.INTERACTIVE),
    ]:
        woken.on(limiter.try_acquire(priority), tag)  # type: ignore[arg-type]
    order = []
    permit: Permit = held
    while True:
        limiter.release(permit)
        if not woken.outcomes:
            break
        tag, outcome = woken.outcomes.pop()
        assert isinstance(outcome, Permit)
        order.append(tag)
        permit = outcome
    assert order == ["interactive-1", "interactive-2", "normal-1", "normal-2", "batch-1", "batch-2"]


def test_a_new_request_does_not_pass_waiters_of_its_priority() -> None:
    clock = FakeClock()
    limiter = fixed(clock, 2)
    batch = limiter.try_acquire(Priority.BATCH, weight=2)
    assert isinstance(batch, Permit)
    woken = Woken()
    woken.on(limiter.try_acquire(Priority.NORMAL), "normal")  # type: ignore[arg-type]
    limiter.release(batch)
    # One slot is free after the waiter got the other: a newcomer may take it...
    assert isinstance(limiter.try_acquire(Priority.NORMAL), Permit)
    # ...but not while someone of its priority waits.
    assert isinstance(limiter.try_acquire(Priority.NORMAL), Waiter)
    assert isinstance(limiter.try_acquire(Priority.NORMAL), Waiter)


def test_a_batch_weight_is_capped_at_the_limit() -> None:
    limiter = fixed(FakeClock(), 3)
    permit = limiter.try_acquire(Priority.BATCH, weight=50)
    assert isinstance(permit, Permit)
    assert permit.weight == 3
    assert limiter.inflight == 3
    limiter.release(permit)
    assert limiter.inflight == 0


def test_abandon_returns_a_permit_handed_over_meanwhile() -> None:
    clock = FakeClock()
    limiter = fixed(clock, 1)
    held = limiter.try_acquire()
    assert isinstance(held, Permit)
    waiter = limiter.try_acquire()
    assert isinstance(waiter, Waiter)
    limiter.release(held)
    outcome = limiter.abandon(waiter)
    assert isinstance(outcome, Permit)  # the caller must run or release it
    limiter.release(outcome)
    assert limiter.inflight == 0
    # Cancelled while waiting: gone from the queue, and not counted as a refusal.
    held = limiter.try_acquire()
    assert isinstance(held, Permit)
    waiter = limiter.try_acquire()
    assert isinstance(waiter, Waiter)
    assert isinstance(limiter.abandon(waiter, refuse=False), Refusal)
    assert limiter.queued == 0
    assert limiter.refused == {}


def test_release_twice_frees_one_slot() -> None:
    limiter = fixed(FakeClock(), 2)
    permit = limiter.try_acquire()
    assert isinstance(permit, Permit)
    limiter.release(permit)
    limiter.release(permit)
    assert limiter.inflight == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_limit": 0}, "min_limit must be >= 1"),
        ({"min_limit": 5, "max_limit": 2}, "below min_limit"),
        ({"initial_limit": 300}, "initial_limit (300) must be between"),
        ({"max_queue": -1}, "max_queue"),
        ({"max_queue_time": 0}, "max_queue_time"),
        ({"tolerance": 1.0}, "tolerance must be > 1"),
    ],
)
def test_bad_configurations_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AdaptiveConfig(**options)  # type: ignore[arg-type]


# -- settings ----------------------------------------------------------------------------


def test_settings_switch_and_table() -> None:
    settings = parse_settings(
        """
[databases.main]
type = "memory"
adaptive_concurrency = true

[databases.tuned]
type = "memory"
adaptive_concurrency = { min_limit = 2, max_limit = 16, max_queue = 10, max_queue_time = 0.05 }

[databases.off]
type = "memory"

[apis.up]
base_url = "http://127.0.0.1:9/"
adaptive_concurrency = { enabled = false }

[operations.fast]
database = "main"
query = "k"
interactive = true
"""
    )
    main = settings.databases["main"].adaptive_concurrency
    assert main is not None
    assert main.config() == AdaptiveConfig()
    tuned = settings.databases["tuned"].adaptive_concurrency
    assert tuned is not None
    assert tuned.config() == AdaptiveConfig(
        min_limit=2, max_limit=16, max_queue=10, max_queue_time=0.05
    )
    assert settings.databases["off"].adaptive_concurrency is None
    assert settings.operations["fast"].interactive
    assert sorted(Admission(settings).limiters) == ["main", "tuned"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"yes"', "databases.m.adaptive_concurrency: must be true, false or a table"),
        ("{ min_limit = 5, max_limit = 2 }", "adaptive_concurrency: max_limit (2) is below"),
        ("{ max_limt = 2 }", "adaptive_concurrency.max_limt: unknown key"),
        ("{ tolerance = 0.9 }", "adaptive_concurrency.tolerance: Input should be greater than 1"),
        ("{ max_queue_time = 0 }", "adaptive_concurrency.max_queue_time"),
    ],
)
def test_settings_are_checked_at_load_time(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(f'[databases.m]\ntype = "memory"\nadaptive_concurrency = {value}\n')
    assert message in str(info.value)


# -- on the event loop -------------------------------------------------------------------


def admission_with(slots: int, **options: object) -> tuple[Admission, ConcurrencyLimiter]:
    table = {"min_limit": slots, "max_limit": slots, **options}
    toml = ", ".join(f"{key} = {value}" for key, value in table.items())
    settings = parse_settings(
        f'[databases.db]\ntype = "memory"\nadaptive_concurrency = {{ {toml} }}\n'
    )
    admission = Admission(settings)
    limiter = admission.limiter("db")
    assert limiter is not None
    return admission, limiter


async def test_a_waiter_is_refused_when_the_cap_passes_not_later() -> None:
    admission, limiter = admission_with(1, max_queue_time=0.05)
    release = asyncio.Event()

    async def hold() -> str:
        await release.wait()
        return "held"

    holder = asyncio.create_task(admitted(admission, limiter, Priority.NORMAL, Deadline(5), hold))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Overloaded) as info:
        await admitted(admission, limiter, Priority.NORMAL, Deadline(5), hold)
    waited = loop.time() - started
    assert info.value.refusal.reason is RefusalReason.QUEUE_TIME
    assert 0.04 <= waited < 0.5
    release.set()
    assert await holder == "held"
    assert limiter.inflight == 0
    assert limiter.queued == 0


async def test_the_request_deadline_caps_the_wait_too() -> None:
    admission, limiter = admission_with(1, max_queue_time=5)
    permit = await admission.acquire(limiter, Priority.NORMAL, Deadline(5))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Overloaded):
        await admission.acquire(limiter, Priority.NORMAL, Deadline(0.05))
    assert loop.time() - started < 1.0
    limiter.release(permit)


async def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    admission, limiter = admission_with(1, max_queue_time=5)
    permit = await admission.acquire(limiter, Priority.NORMAL, Deadline(5))
    waiting = asyncio.create_task(admission.acquire(limiter, Priority.NORMAL, Deadline(5)))
    await asyncio.sleep(0.01)
    assert limiter.queued == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    limiter.release(permit)
    assert (limiter.inflight, limiter.queued, limiter.refused) == (0, 0, {})


async def test_a_waiter_is_admitted_when_a_slot_frees() -> None:
    admission, limiter = admission_with(1, max_queue_time=5)
    permit = await admission.acquire(limiter, Priority.NORMAL, Deadline(5))
    waiting = asyncio.create_task(admission.acquire(limiter, Priority.BATCH, Deadline(5)))
    await asyncio.sleep(0.01)
    limiter.release(permit, 0.01)
    second = await asyncio.wait_for(waiting, 1)
    assert isinstance(second, Permit)
    assert limiter.inflight == 1
    limiter.release(second)


async def test_hold_takes_every_resource_or_none() -> None:
    settings = parse_settings(
        """
[databases.a]
type = "memory"
adaptive_concurrency = { min_limit = 2, max_limit = 2, max_queue = 0 }
[databases.b]
type = "memory"
adaptive_concurrency = { min_limit = 1, max_limit = 1, max_queue = 0 }
"""
    )
    admission = Admission(settings)
    a, b = admission.limiters["a"], admission.limiters["b"]
    blocker = b.try_acquire()
    assert isinstance(blocker, Permit)
    with pytest.raises(Overloaded) as info:
        async with admission.hold({"a": 2, "b": 1}, Priority.BATCH, Deadline(1)):
            pytest.fail("must not run")
    assert info.value.resource == "b"
    assert a.inflight == 0  # what it had taken on "a" is given back
    b.release(blocker)
    async with admission.hold({"a": 2, "b": 1, "unlimited": 5}, Priority.BATCH, Deadline(1)):
        assert (a.inflight, b.inflight) == (2, 1)
    assert (a.inflight, b.inflight) == (0, 0)


# -- the whole limiter against a simulated resource --------------------------------------


@dataclass
class Outcome:
    admitted_latencies: list[float] = field(default_factory=list)
    completed: int = 0
    refused: int = 0
    limits: list[int] = field(default_factory=list)


def simulate(
    limiter: ConcurrencyLimiter,
    clock: FakeClock,
    *,
    connections: int,
    service: Callable[[float], float],
    rate: float,
    duration: float,
    measure_from: float,
    seed: int = 7,
) -> Outcome:
    """Open-loop Poisson arrivals at ``rate``/s into ``limiter``, in front of
    a pool of ``connections`` served first come, first served; ``service(t)``
    is one operation's time at simulated time ``t``. Latencies are the
    client's: queue wait + pool wait + service."""
    rng = random.Random(seed)
    start = clock.now
    events: list[tuple[float, int, str, object]] = []
    free_at = [start] * connections  # each connection's next free time
    order = 0
    out = Outcome()

    def push(at: float, kind: str, item: object) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (at, order, kind, item))

    def run(permit: Permit, arrived: float) -> None:
        now = clock.now
        free = heapq.heappop(free_at)
        begin = max(now, free)
        end = begin + service(now - start) * rng.uniform(0.9, 1.1)
        heapq.heappush(free_at, end)
        push(end, "done", (permit, arrived, now))

    t = start
    while t < start + duration:
        t += rng.expovariate(rate)
        push(t, "arrive", None)
    while events:
        at, _, kind, item = heapq.heappop(events)
        clock.now = at
        measured = at - start >= measure_from
        if kind == "arrive":
            arrived = at
            outcome = limiter.try_acquire()
            if isinstance(outcome, Permit):
                run(outcome, arrived)
            elif isinstance(outcome, Refusal):
                out.refused += measured
            else:

                def ready(result: Permit | Refusal, arrived: float = arrived) -> None:
                    if isinstance(result, Permit):
                        run(result, arrived)
                    elif clock.now - start >= measure_from:
                        out.refused += 1

                outcome.on_ready = ready
        else:
            permit, arrived, began = item  # type: ignore[misc]
            limiter.release(permit, at - began)
            if measured:
                out.completed += 1
                out.admitted_latencies.append(at - arrived)
                out.limits.append(limiter.limit.slots)
        if kind == "arrive" and limiter.queued:
            limiter.expire()
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_overload_of_five_times_capacity_meets_the_targets_on_a_model_pool() -> None:
    """A pool of 4 connections, 20 ms per operation: capacity 200/s."""
    connections, service, capacity = 4, 0.020, 200.0
    clock = FakeClock()
    quiet = ConcurrencyLimiter(config(min_samples=20), clock=clock)
    unloaded = simulate(
        quiet,
        clock,
        connections=connections,
        service=lambda t: service,
        rate=capacity * 0.05,
        duration=20,
        measure_from=2,
    )
    unloaded_p99 = p99(unloaded.admitted_latencies)
    clock = FakeClock()
    limiter = ConcurrencyLimiter(config(min_samples=20), clock=clock)
    loaded = simulate(
        limiter,
        clock,
        connections=connections,
        service=lambda t: service,
        rate=capacity * 5,
        duration=20,
        measure_from=2,
    )
    goodput = loaded.completed / 18
    assert p99(loaded.admitted_latencies) <= 2 * unloaded_p99
    assert goodput >= 0.9 * capacity
    assert loaded.refused > 0
    assert min(loaded.limits) >= 4
    assert max(loaded.limits) <= 8


def test_without_the_limit_the_same_overload_queues_without_bound() -> None:
    """The contrast: no admission (a limit far above the pool) lets the pool's
    own queue grow with the overload."""
    clock = FakeClock()
    unlimited = fixed(clock, 100_000, max_queue=0)
    loaded = simulate(
        unlimited,
        clock,
        connections=4,
        service=lambda t: 0.020,
        rate=1000,
        duration=5,
        measure_from=1,
    )
    assert p99(loaded.admitted_latencies) > 2.0  # seconds, and growing with the run


def test_a_resource_that_turns_slower_is_followed() -> None:
    """Service time triples at t = 10 s and stays: after relearning, goodput
    is back near the new capacity (4 / 60 ms = 66/s) and latency bounded."""
    clock = FakeClock()
    limiter = ConcurrencyLimiter(config(min_samples=20), clock=clock)
    loaded = simulate(
        limiter,
        clock,
        connections=4,
        service=lambda t: 0.020 if t < 10 else 0.060,
        rate=400,
        duration=30,
        measure_from=15,
    )
    assert loaded.completed / 15 >= 0.9 * (4 / 0.060)
    assert p99(loaded.admitted_latencies) <= 2 * 0.066


def test_a_reload_keeps_the_limiters_whose_settings_did_not_change() -> None:
    first = parse_settings(
        '[databases.a]\ntype = "memory"\nadaptive_concurrency = true\n'
        '[databases.b]\ntype = "memory"\nadaptive_concurrency = true\n'
    )
    admission = Admission(first)
    second = parse_settings(
        '[databases.a]\ntype = "memory"\nadaptive_concurrency = true\n'
        '[databases.b]\ntype = "memory"\nadaptive_concurrency = { max_limit = 9 }\n'
    )
    reloaded = Admission(second, previous=admission)
    assert reloaded.limiters["a"] is admission.limiters["a"]
    assert reloaded.limiters["b"] is not admission.limiters["b"]
    assert reloaded.limiters["b"].config.max_limit == 9
    assert reloaded.loop_lag is admission.loop_lag


async def test_loop_lag_sees_a_blocked_loop() -> None:
    lag = LoopLag(interval=0.01)
    assert lag.current() == 0.0
    await asyncio.sleep(0.05)
    quiet = lag.current()
    time.sleep(0.2)  # noqa: ASYNC251 - the point: the loop is blocked, the next tick is late
    await asyncio.sleep(0.001)  # the overdue tick runs first
    # 0.2 s late once, smoothed (weight 0.25): about 0.05 above the quiet lag.
    assert lag.current() > quiet + 0.02
