"""``make bench``: run every benchmark script and write docs/benchmarks-latest.md.

Each script prints a Markdown table comparing iogate with the raw driver (or,
for the gateway, a bare Starlette app and Datasette) in the same run.
``--quick`` shrinks the workloads (under 2 minutes in all). Scripts run one
after another, never in parallel, on loopback only; the load average before
each is recorded, since the figures mean little on a busy machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "benchmarks-latest.md"


def machine() -> str:
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores, {memory}, Python {platform.python_version()}, {platform.system()}"
    )


def run(title: str, command: list[str]) -> str:
    shown = " ".join(Path(part).name if part == sys.executable else part for part in command)
    load = os.getloadavg()[0]
    print(f"== {title}: {shown} (load average {load:.1f})", file=sys.stderr)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - started
    body = done.stdout.strip() or "(no output)"
    if done.returncode != 0:
        body += f"\n\nexit {done.returncode}:\n```\n{done.stderr.strip()[-2000:]}\n```"
    return f"## {title}\n\n`{shown}` ({elapsed:.0f} s, load average {load:.1f} before)\n\n{body}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small workloads (< 2 minutes)")
    args = parser.parse_args()
    py = sys.executable
    quick = ["--quick"] if args.quick else []
    sections = [
        run("SQL managers vs raw drivers", [py, "-m", "bench.db_bench", *quick]),
        run(
            "Redis manager vs redis.asyncio",
            [py, "bench/redis_bench.py", *(["--ops", "5000"] if args.quick else [])],
        ),
        run("Batches vs one by one, mixed batches", [py, "bench/batch_bench.py", *quick]),
        run(
            "API manager vs aiohttp",
            [py, "bench/api_bench.py", *(["--requests", "2000"] if args.quick else [])],
        ),
        run(
            "Gateway under wrk: iogate vs bare Starlette vs Datasette",
            [py, "bench/gateway_bench.py", *(["--duration", "2"] if args.quick else [])],
        ),
        run(
            "Logging cost: default log level vs warning",
            [
                py,
                "bench/logging_cost.py",
                *(["--duration", "2", "--rounds", "3"] if args.quick else []),
            ],
        ),
        run("Memory per manager", [py, "bench/memory_bench.py", *quick]),
        run(
            "API manager vs aiohttp, client instructions per request (callgrind)",
            [
                py,
                "bench/api_instructions.py",
                *(["--concurrency", "50", "--large", "700"] if args.quick else ["--rounds", "2"]),
            ],
        ),
        run("What the input checks cost (callgrind)", [py, "bench/checks_cost.py", *quick]),
        run("Durable jobs", [py, "bench/jobs_bench.py", *quick]),
        run(
            "Adaptive concurrency under 5x overload",
            [
                py,
                "bench/overload.py",
                *(["--duration", "8", "--unloaded", "4"] if args.quick else []),
            ],
        ),
    ]
    header = (
        f"# Benchmark run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Machine: {machine()}. Command: `make bench{'-quick' if args.quick else ''}`.\n"
        "Figures are medians of interleaved rounds; see docs/benchmarks.md for the analysis.\n"
    )
    OUTPUT.write_text(header + "\n" + "\n".join(sections), encoding="utf-8")
    print(OUTPUT.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
