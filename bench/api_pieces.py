"""Per-call cost of each piece of the API path, in isolation.

Run: ``.venv/bin/python bench/api_pieces.py [--number N] [--repeat R]`` for
µs per call (best of R loops of N calls), or, load-independent, instructions
per call under callgrind::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/pieces.out \\
        .venv/bin/python bench/api_pieces.py --callgrind
    .venv/bin/python bench/api_pieces.py --read /tmp/pieces.out

Each piece is timed alone, on the objects a manager with retry, breaker,
retry budget and metrics on really uses, with the arguments of a
``GET /users/123`` answered with a small JSON body. No network: the wire is
what raw aiohttp costs too, so what is listed here is iogate's own share of
a call. A piece a manager does not run on that call (a rate limit that is
not configured, a caller's headers that are not given, a deadline header
without a caller's deadline) costs nothing on it and is listed for when it
is on. "recording, inline" is the code ``record()`` replaced in the API
manager, to show what the shared function costs over it.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import subprocess
import time
from collections.abc import Awaitable, Callable

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from iogate.backends.http.body import decode_body
from iogate.backends.http.headers import checked_headers, mask_with
from iogate.backends.http.response import UNREAD, ResponseResult, copy_headers
from iogate.backends.http.wire import Call
from iogate.backends.urls import BaseURL
from iogate.backends.urls import _join as join_endpoint_cached
from iogate.core import events
from iogate.core.events import OperationEvent
from iogate.core.recording import record
from iogate.core.redact import SecretMask
from iogate.core.result import Result
from iogate.core.stats import OperationStats
from iogate.metrics.collector import MetricsCollector
from iogate.resilience.breaker import CircuitBreaker, CircuitBreakerConfig
from iogate.resilience.budget import RetryBudget
from iogate.resilience.deadline_headers import REQUEST_TIMEOUT, format_timeout
from iogate.resilience.ratelimit import RateLimiter

PAYLOAD = orjson.dumps({"id": 123, "name": "John", "tags": ["a", "b", "c"], "active": True})
RESPONSE_HEADERS = CIMultiDictProxy(
    CIMultiDict(
        {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Length": str(len(PAYLOAD)),
            "Date": "Mon, 07 Dec 2026 14:00:00 GMT",
            "Server": "Python/3.11 aiohttp/3.14",
        }
    )
)
Piece = tuple[str, str, Callable[[], object] | None, Callable[[], Awaitable[object]] | None]


def pieces() -> list[Piece]:
    base = BaseURL.parse("http://127.0.0.1:9/v1")
    urls = {"/users/123": "http://127.0.0.1:9/v1/users/123"}
    mask = SecretMask(())
    caller = {"Authorization": "Bearer caller-token-123", "X-Trace": "abc"}
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=5, recovery_timeout=5))
    budget = RetryBudget()
    limiter = RateLimiter("1000000000/second", name="bench")
    stats = OperationStats()
    result = Result.ok({"id": 1}, status_code=200)

    def call_state() -> object:
        # What request() does without a caller's deadline: the Call is the deadline.
        call = Call("GET", False, time.monotonic)
        call.expires_at = time.monotonic() + 60.0
        return call

    def breaker_pass() -> None:
        breaker.record_success(breaker.acquire())

    def response() -> object:
        # As Wire._result builds a 2xx Result: headers copied only when read.
        headers = RESPONSE_HEADERS
        data = decode_body(PAYLOAD, headers.get("Content-Type", ""), mask, 10_000_000, False, 200)
        reply = ResponseResult(True, data, None, None, None, None, 0.0, 1, None, 200, False, UNREAD)
        reply._source = headers
        reply._mask = mask
        return reply

    def headers_read() -> object:
        return copy_headers(RESPONSE_HEADERS, mask)

    def recording() -> object:
        return record(stats, result, time.perf_counter(), "bench", "api", "http", "GET", 1)

    def recording_inline() -> object:
        # What the API manager did before it called record().
        started = time.perf_counter()
        duration = time.perf_counter() - started
        result.duration_ms = duration_ms = round(duration * 1_000_000) / 1000
        result.attempts = attempts = 1
        error_type = result.error_type
        stats.record(duration_ms, error_type)
        if events.hooks:
            events.emit(
                OperationEvent("bench", "api", "http", "GET", duration, error_type, attempts)
            )
        return result

    async def leaf() -> None:
        return None

    async def layer() -> None:
        await leaf()

    return [
        ("empty loop (subtracted from the rows below)", "", lambda: None, None),
        (
            "URL check and join, first time",
            "once per endpoint",
            lambda: join_endpoint_cached.__wrapped__(base, "/users/123"),
            None,
        ),
        ("URL, remembered endpoint", "every call", lambda: urls.get("/users/123"), None),
        (
            "caller headers checked + secret mask (2 headers)",
            "only with caller headers",
            lambda: mask_with(mask, checked_headers(caller, configured=False)),
            None,
        ),
        ("circuit breaker: acquire + record_success", "every attempt", breaker_pass, None),
        ("retry budget: deposit", "every call", budget.deposit, None),
        ("rate limit: acquire (memory storage)", "only when configured", None, limiter.acquire),
        (
            "deadline header: Request-Timeout formatted",
            "only under a caller's deadline",
            lambda: {REQUEST_TIMEOUT: format_timeout(REQUEST_TIMEOUT, 12.345)},
            None,
        ),
        (
            "per-call state: Call, its own Deadline",
            "every call",
            call_state,
            None,
        ),
        ("response: JSON decoded, Result built", "every call", response, None),
        ("response headers copied and masked", "only when read", headers_read, None),
        ("recording, no hook: record()", "every call", recording, None),
        ("recording, no hook: the same code inline", "(before)", recording_inline, None),
        ("recording, metrics collector installed", "every call", recording, None),
        ("empty coroutine awaited (subtracted from the next)", "", None, leaf),
        ("one coroutine layer more", "per layer", None, layer),
    ]


def _loop(fn: Callable[[], object], number: int) -> float:
    started = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - started


async def _loop_async(fn: Callable[[], Awaitable[object]], number: int) -> float:
    started = time.perf_counter()
    for _ in range(number):
        await fn()
    return time.perf_counter() - started


def _dump(label: str) -> None:
    subprocess.run(
        ["callgrind_control", "-d", label, str(os.getpid())], check=True, capture_output=True
    )


async def measure(number: int, repeat: int, callgrind: bool) -> list[tuple[str, str, float]]:
    rows: list[tuple[str, str, float]] = []
    collector = MetricsCollector()
    if callgrind:
        _dump("start")
    for index, (label, when, fn, afn) in enumerate(pieces()):
        if label.startswith("recording, metrics"):
            collector.install()
        times = []
        for _ in range(1 if callgrind else repeat):
            if fn is not None:
                times.append(_loop(fn, number))
            else:
                assert afn is not None
                times.append(await _loop_async(afn, number))
        if callgrind:
            _dump(f"piece-{index}")  # callgrind_control drops labels with parentheses
        rows.append((label, when, min(times) / number * 1e6))
    collector.uninstall()
    return rows


def _subtract_baselines(rows: list[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
    out = []
    loop_cost = rows[0][2]
    coroutine = 0.0
    for label, when, value in rows[1:]:
        if label.startswith("empty coroutine"):
            coroutine = value
            continue
        base = coroutine if label.startswith("one coroutine") else loop_cost
        out.append((label, when, value - base))
    return out


def read_callgrind(prefix: str, number: int) -> list[tuple[str, str, float]]:
    """Instructions per call from the dumps ``--callgrind`` asked for."""
    rows = []
    labels = {f"piece-{i}": (label, when) for i, (label, when, _, _) in enumerate(pieces())}
    for path in sorted(glob.glob(f"{prefix}.*"), key=lambda p: int(p.rsplit(".", 1)[1])):
        name = total = None
        with open(path) as dump:
            for line in dump:
                if line.startswith("desc: Trigger:"):
                    name = line.rsplit(" ", 1)[1].strip()
                elif line.startswith(("summary:", "totals:")):
                    total = int(line.split()[1])
        if name in labels and total is not None:
            rows.append((*labels[name], total / number))
    return _subtract_baselines(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--callgrind", action="store_true", help="run under callgrind, dump")
    parser.add_argument("--read", metavar="PREFIX", help="print a --callgrind run's figures")
    args = parser.parse_args()
    if args.read:
        rows, unit = read_callgrind(args.read, args.number), "instructions per call"
    else:
        rows = _subtract_baselines(asyncio.run(measure(args.number, args.repeat, args.callgrind)))
        unit = f"µs per call, best of {args.repeat} loops of {args.number}"
    print(f"| piece | {unit} | when |")
    print("|---|---:|---|")
    for label, when, value in rows:
        print(f"| {label} | {value:,.2f} | {when} |")


if __name__ == "__main__":
    main()
