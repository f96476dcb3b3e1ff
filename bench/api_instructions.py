"""Client instructions per request: AsyncAPIManager against raw aiohttp, under callgrind.

Wall clock on a shared 2-core machine scatters by 10-40 % between rounds of
``bench/api_bench.py`` (the upstream and the client share the cores); the
instructions the client executes per request do not depend on the load. The
client runs ``--small`` then ``--large`` GETs of ``/v1/users/123`` (the
upstream of ``bench/api_bench.py``, in its own process, not counted) under
``valgrind --tool=callgrind``, and the figure is

    (Ir(large) - Ir(small)) / (large - small)

so start-up, imports and warm-up cancel out. Same variants as
``api_bench.py``: raw ``aiohttp.ClientSession`` with ``response.json()``, and
the manager with retry, circuit breaker, retry budget and the metrics
collector installed.

    python bench/api_instructions.py [--src OTHER_TREE/src ...] [--rounds 2]

Each ``--src`` is measured too (its own ``iogate``; the bench code is this
one), interleaved with this tree, round by round. Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
SRC = HERE.parent.parent / "src"
CONCURRENCIES = (1, 50)


def client(variant: str, concurrency: int, requests: int, port: int) -> None:
    """The measured process: warm up, then ``requests`` GETs at ``concurrency``."""
    import asyncio

    from api_bench import Variants  # this directory: the same two clients

    from iogate.metrics.collector import MetricsCollector

    async def main() -> None:
        MetricsCollector().install()  # as in api_bench.py: on for both variants
        variants = Variants(port)
        if variant == "raw":
            call = variants.raw_get
        else:
            await variants.manager.initialize_session()
            call = variants.manager_get

        async def worker(count: int) -> None:
            for _ in range(count):
                await call()

        # Warm-up: connections opened, caches filled (the same in both runs).
        await asyncio.gather(*(worker(2) for _ in range(50)))
        per_task = requests // concurrency
        await asyncio.gather(*(worker(per_task) for _ in range(concurrency)))
        await variants.close()

    asyncio.run(main())


def total_ir(src: Path, variant: str, concurrency: int, requests: int, port: int) -> int:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                str(HERE),
                "--client",
                variant,
                str(concurrency),
                str(requests),
                str(port),
            ],
            env={**os.environ, "PYTHONPATH": str(src)},
            check=True,
            capture_output=True,
        )
        match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
        assert match is not None, "no total in the callgrind output"
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", default=[], help="another tree's src/")
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--concurrency", type=int, action="append", help="only these (default: 1 and 50)"
    )
    parser.add_argument("--no-raw", action="store_true", help="skip raw aiohttp (its figure: 0)")
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        variant, concurrency, requests, port = args.client
        client(variant, int(concurrency), int(requests), int(port))
        return
    if shutil.which("valgrind") is None:
        print("valgrind not found: skipped (`make bench-tools` installs it)")
        return
    sys.path.insert(0, str(HERE.parent))
    from api_bench import _free_port, _wait_for_port

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(HERE.parent / "api_bench.py"), "--serve", str(port)]
    )
    trees = (
        ([] if args.no_raw else [("raw", SRC)])
        + [("this", SRC)]
        + [(f"src{i}", Path(s)) for i, s in enumerate(args.src)]
    )
    try:
        _wait_for_port(port)
        print("| concurrency | round | tree | instructions per request | over raw |")
        print("|---:|---:|---|---:|---:|")
        for concurrency in args.concurrency or CONCURRENCIES:
            for round_number in range(args.rounds):
                raw = 0.0
                for label, src in trees:
                    variant = "raw" if label == "raw" else "manager"
                    small = total_ir(src, variant, concurrency, args.small, port)
                    large = total_ir(src, variant, concurrency, args.large, port)
                    per = (large - small) / (args.large - args.small)
                    if label == "raw":
                        raw = per
                        over = ""
                    else:
                        over = f"{per / raw - 1:+.1%}" if raw else ""
                    print(
                        f"| {concurrency} | {round_number + 1} | {label} | {per:,.0f} | {over} |",
                        flush=True,
                    )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
