"""Retry amplification: upstream attempts per request against an always-failing API.

Run: ``.venv/bin/python bench/retry_amplification.py [--requests N] [--concurrency C]``.

An aiohttp upstream on 127.0.0.1 answers every GET with 503 (with
``Retry-After: 1`` when asked). ``AsyncAPIManager`` with its defaults (3
attempts, full-jitter backoff, retry budget on) sends ``--requests`` GETs
from ``--concurrency`` callers, with real waits, and the upstream counts what
it receives. Reported per variant: upstream attempts per request over the
whole run; the worst window of ``--window`` consecutive requests as the
budget saw them (the retries it granted between one request's deposit and the
deposit ``--window`` requests later); and the worst window of ``--window``
consecutive requests counting each request's own attempts. The breaker is
off in the first two rows (an open circuit hides the budget: no attempt
reaches the upstream at all), on in the last. Loopback only, bounded counts.
Run it against another tree with ``PYTHONPATH=<that tree>/src``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from aiohttp import web

from iogate.backends.http import AsyncAPIManager
from iogate.resilience.budget import RetryBudget


class _LedgerBudget(RetryBudget):
    """The default budget, recording the order of deposits and granted retries."""

    __slots__ = ("ledger",)

    def __init__(self) -> None:
        super().__init__()
        self.ledger: list[bool] = []  # False: a request's deposit; True: a retry granted

    def deposit(self) -> None:
        self.ledger.append(False)
        super().deposit()

    def try_withdraw(self) -> bool:
        granted = super().try_withdraw()
        if granted:
            self.ledger.append(True)
        return granted


def _worst_ledger_window(ledger: list[bool], window: int) -> float:
    deposits = [i for i, granted in enumerate(ledger) if not granted]
    granted_before = [0]
    for granted in ledger:
        granted_before.append(granted_before[-1] + granted)
    worst = 0
    for first in range(len(deposits) - window + 1):
        end = deposits[first + window] if first + window < len(deposits) else len(ledger)
        worst = max(worst, granted_before[end] - granted_before[deposits[first]])
    return 1 + worst / window


async def _upstream() -> tuple[web.AppRunner, int, list[float]]:
    hits: list[float] = []

    async def fail(request: web.Request) -> web.Response:
        hits.append(time.monotonic())
        headers = (
            {"Retry-After": request.query["retry_after"]} if "retry_after" in request.query else {}
        )
        return web.json_response({"down": True}, status=503, headers=headers)

    app = web.Application()
    app.router.add_get("/v1/fail", fail)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = runner.addresses[0][1]
    return runner, port, hits


async def measure(
    *, requests: int, concurrency: int, window: int, retry_after: str | None, breaker: bool
) -> dict[str, Any]:
    runner, port, hits = await _upstream()
    budget = _LedgerBudget()
    options: dict[str, Any] = {
        "name": "amplification",
        "max_connections": concurrency,
        "retry_budget": budget,
    }
    if not breaker:
        options["circuit_breaker"] = False
    manager = AsyncAPIManager(f"http://127.0.0.1:{port}/v1", **options)
    params = {"retry_after": retry_after} if retry_after else None
    attempts = [0] * requests
    starts = [0.0] * requests
    next_index = iter(range(requests))

    async def caller() -> None:
        for index in next_index:
            starts[index] = time.monotonic()
            result = await manager.get("/fail", params=params)
            assert not result.success
            attempts[index] = result.attempts if result.error_type != "circuit_open" else 0

    began = time.monotonic()
    try:
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    finally:
        elapsed = time.monotonic() - began
        await manager.close()
        await runner.cleanup()
    worst_window = max(
        sum(attempts[i : i + window]) / window for i in range(0, requests - window + 1)
    )
    return {
        "ratio": len(hits) / requests,
        "worst_ledger": _worst_ledger_window(budget.ledger, window),
        "worst_window": worst_window,
        "elapsed": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--window", type=int, default=100, help="requests per window")
    args = parser.parse_args()
    variants = [
        ("always 503", None, False),
        ("always 503 + Retry-After: 1", "1", False),
        ("always 503, breaker on", None, True),
    ]
    print(f"{args.requests} GETs from {args.concurrency} callers, manager defaults, real waits\n")
    print(
        f"| upstream | attempts/request | worst {args.window}-request window, budget "
        f"| worst {args.window}-request window, own attempts | run (s) |"
    )
    print("|---|---:|---:|---:|---:|")
    for title, retry_after, breaker in variants:
        row = asyncio.run(
            measure(
                requests=args.requests,
                concurrency=args.concurrency,
                window=args.window,
                retry_after=retry_after,
                breaker=breaker,
            )
        )
        print(
            f"| {title} | {row['ratio']:.3f} | {row['worst_ledger']:.2f} "
            f"| {row['worst_window']:.2f} | {row['elapsed']:.1f} |"
        )


if __name__ == "__main__":
    main()
