"""What the idle-connection check costs the hot path: check on vs off.

Two managers on the same database, one with the default
``idle_check_interval`` (2 s) and one with the check off (0), each with
one pooled connection, run ``SELECT 1`` back to back. A connection in
constant use is never idle past the interval, so the check costs only the
clock comparison the pool already makes for ``max_idle_time``; this shows
whether that is measurable. Each round runs its queries in 20 turns that
alternate which manager goes first; medians of the rounds' per-query times
are reported.

Run: ``.venv/bin/python bench/idle_check.py [--queries N] [--rounds N]
[--only postgres|mysql]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iogate import AsyncPostgreSQLManager, DatabaseOptions
from iogate.backends.mysql import AsyncMySQLManager

PG_URL = os.environ.get("IOGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("IOGATE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
CHUNKS = 20  # turns per round, alternating which manager goes first


async def per_query_us(manager: Any, queries: int) -> float:
    started = time.perf_counter()
    for _ in range(queries):
        result = await manager.execute_query("SELECT 1")
        assert result.success, result
    return (time.perf_counter() - started) / queries * 1e6


async def compare(kind: str, queries: int, rounds: int) -> None:
    factory = AsyncPostgreSQLManager if kind == "postgres" else AsyncMySQLManager
    url = PG_URL if kind == "postgres" else MYSQL_URL
    managers = {
        label: factory(
            url, options=DatabaseOptions(max_connections=1, idle_check_interval=interval)
        )
        for label, interval in (("check on", 2.0), ("check off", 0.0))
    }
    times: dict[str, list[float]] = {label: [] for label in managers}
    try:
        for manager in managers.values():
            await manager.initialize_pool()
            await per_query_us(manager, 500)  # warm up
        chunk = max(1, queries // CHUNKS)
        for round_number in range(rounds):
            spent = dict.fromkeys(managers, 0.0)
            # Alternate in chunks, so load from elsewhere falls on both alike.
            for turn in range(CHUNKS):
                order = list(managers) if turn % 2 == 0 else list(reversed(managers))
                for label in order:
                    spent[label] += await per_query_us(managers[label], chunk) / CHUNKS
            for label in managers:
                times[label].append(spent[label])
            print(
                f"{kind} round {round_number + 1}: "
                + ", ".join(f"{label} {times[label][-1]:.1f} us" for label in managers),
                flush=True,
            )
        on, off = (statistics.median(times[label]) for label in managers)
        print(
            f"{kind}: median check on {on:.1f} us/query, check off {off:.1f} us/query, "
            f"on/off {on / off:.3f} ({queries} queries x {rounds} rounds)"
        )
    finally:
        for manager in managers.values():
            await manager.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["postgres", "mysql"])
    args = parser.parse_args()
    for kind in ("postgres", "mysql"):
        if args.only in (None, kind):
            await compare(kind, args.queries, args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
