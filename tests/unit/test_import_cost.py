"""What ``import iogate`` costs, measured in a fresh interpreter.

Each measurement runs a new ``python`` process against this checkout's
``src``: a module already imported by the test session would hide the cost.
The facade imports its names lazily, so ``import iogate`` loads no driver,
and a program using SQLite alone never imports FastAPI, aiohttp, Redis,
asyncpg or prometheus-client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Issue #15, "Done when": import iogate costs at most this much over a bare interpreter.
IMPORT_BUDGET_KIB = 15 * 1024

NOT_FOR_SQLITE = (
    "fastapi",
    "starlette",
    "aiohttp",
    "redis",
    "asyncpg",
    "asyncmy",
    "prometheus_client",
)

# The peak RSS of this process image, in KiB. Not ru_maxrss: Linux carries it
# over fork and exec, so a child of a big pytest process would report the parent's.
PEAK_RSS = (
    "status = open('/proc/self/status').read()\n"
    "print(next(line.split()[1] for line in status.splitlines() if line.startswith('VmHWM:')))"
)


def run_python(code: str) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def rss_over_bare_kib(imports: str) -> int:
    """Peak RSS (KiB) of ``imports`` minus a bare interpreter's; best of 3."""
    costs = []
    for _ in range(3):
        bare = int(run_python(PEAK_RSS))
        loaded = int(run_python(f"{imports}\n{PEAK_RSS}"))
        costs.append(loaded - bare)
    return min(costs)


def modules_after(code: str) -> set[str]:
    return set(
        json.loads(run_python(f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"))
    )


def test_import_iogate_stays_within_its_memory_budget() -> None:
    cost = rss_over_bare_kib("import iogate")
    assert cost <= IMPORT_BUDGET_KIB, f"import iogate costs {cost} KiB over a bare interpreter"


def test_the_measure_sees_an_eager_import() -> None:
    # The harness must be able to fail: loading the drivers the facade used to
    # load eagerly (aiohttp, asyncpg, redis, prometheus-client) blows the budget.
    cost = rss_over_bare_kib("import aiohttp, asyncpg, redis.asyncio, prometheus_client")
    assert cost > IMPORT_BUDGET_KIB, cost


def test_import_iogate_loads_no_third_party_package() -> None:
    loaded = modules_after("import iogate")
    top_level = {name.partition(".")[0] for name in loaded}
    third_party = (
        top_level - set(sys.stdlib_module_names) - {"iogate", "__main__", "_distutils_hack"}
    )
    assert third_party == set()
    assert {name for name in loaded if name.startswith("iogate.")} == {"iogate._lazy"}


def test_a_sqlite_program_imports_no_server_driver_nor_the_gateway() -> None:
    loaded = modules_after(
        "import asyncio, iogate\n"
        "async def main():\n"
        "    async with iogate.AsyncSQLiteManager(':memory:') as db:\n"
        "        assert (await db.execute_query('SELECT 1')).success\n"
        "asyncio.run(main())"
    )
    assert "iogate.backends.sqlite" in loaded
    assert {name.partition(".")[0] for name in loaded} & set(NOT_FOR_SQLITE) == set()


def test_the_module_check_sees_a_driver() -> None:
    loaded = modules_after("import iogate\niogate.AsyncRedisManager")
    assert "redis" in {name.partition(".")[0] for name in loaded}
