"""Before/after: make bench's scripts on two checkouts, interleaved in one run.

Each script runs as a subprocess alternately for the two trees (A B A B ...), with
``PYTHONPATH=<tree>/src`` and ``cwd=<tree>``: each tree is measured by its own copy
of the benchmark, same arguments. Figures come from the script's Markdown tables:
the ratio to the raw driver (or the Starlette floor) measured in the same process
where there is one, which machine drift between subprocesses barely moves. Median
of the rounds per tree; a figure more than 3 % worse is flagged. Left out:
checks_cost, jobs_bench, overload (long; they measure other things).

Run: ``.venv/bin/python bench/compare_trees.py --before DIR --after DIR [--rounds N]
[--quick] [--only db redis ...] [--out DIR | --reread DIR]``; each DIR is the root
of a checkout (DIR/src, DIR/bench), e.g. a ``git worktree``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

Figure = tuple[str, float, bool]  # name, value, higher is better
Row = dict[str, str]  # a table row: column header -> cell
THRESHOLD = 0.03  # a figure worse than this is flagged (issue 15: "no figure worse by > 3 %")


def tables(text: str) -> list[tuple[list[str], list[Row]]]:
    """Every Markdown table in ``text``: its header and its body rows."""
    found: list[tuple[list[str], list[Row]]] = []
    lines = [line.strip() for line in text.splitlines()]
    for at, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if at + 1 < len(lines) and re.fullmatch(r"\|[-:| ]+\|", lines[at + 1]):
            found.append((cells, []))
        elif found and not re.fullmatch(r"\|[-:| ]+\|", line):
            found[-1][1].append(dict(zip(found[-1][0], cells, strict=False)))
    return found


def cell(row: Row, column: str) -> str:
    """The cell under the first column whose header starts with ``column``
    (by name, not position: a column added to a script's table moves the others)."""
    for header, value in row.items():
        if header.startswith(column):
            return value
    raise KeyError(f"no column {column!r} in {list(row)}")


def num(row: Row, column: str) -> float:
    """The first number in a cell: ``"1,234 (1,100-1,300)"`` -> 1234.0, ``"**0.52**"`` -> 0.52."""
    match = re.search(r"-?[\d,]*\.?\d+", cell(row, column))
    if match is None:
        raise ValueError(f"no number under {column!r} in {row}")
    return float(match.group().replace(",", ""))


def ratio(row: Row, base: Row, column: str) -> float:
    return num(row, column) / num(base, column)


# -- one parser per script: its output -> figures ----------------------------------


def db_figures(text: str) -> Iterator[Figure]:
    """Each (work, concurrency) group ends with the raw driver (asyncpg pool, aiosqlite)."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for _, rows in tables(text):
        for row in rows:
            groups.setdefault((row["work"], row["concurrency"]), []).append(row)
    for (work, concurrency), rows in groups.items():
        raw = rows[-1]
        for row in rows:
            if row["variant"].startswith("iogate"):
                name = f"db {work}, c{concurrency}: iogate / {raw['variant']}"
                yield f"{name} ops/s", ratio(row, raw, "ops/s"), True
                yield f"{name} CPU per op", ratio(row, raw, "CPU"), False


def redis_figures(text: str) -> Iterator[Figure]:
    """Every manager variant against redis.asyncio at the same concurrency."""
    for _, rows in tables(text):
        raw = {row["concurrency"]: row for row in rows if "(raw)" in row["client"]}
        for row in rows:
            concurrency = row["concurrency"]
            if concurrency not in raw or row is raw[concurrency]:
                continue
            label = row["client"].removeprefix("AsyncRedisManager ")
            for verb in ("GET", "SET"):
                name = f"redis {label}, c{concurrency} {verb}: manager / raw"
                yield f"{name} ops/s", ratio(row, raw[concurrency], f"{verb} ops/s"), True
                yield f"{name} CPU per op", ratio(row, raw[concurrency], f"{verb} CPU"), False


def batch_figures(text: str) -> Iterator[Figure]:
    """Ratios to the raw ``asyncio.gather`` where the table has it; else ms and CPU us/op."""
    for header, rows in tables(text):
        title = header[0]
        raw = next((row for row in rows if "raw driver" in row[title]), None)
        for row in rows:
            if row is raw:
                continue
            name = f"batch {title.split(' (')[0]}: {row[title]}"
            if raw is not None:
                yield f"{name}, ms / raw gather", ratio(row, raw, "ms"), False
                yield f"{name}, CPU / raw gather", ratio(row, raw, "CPU"), False
            else:
                yield f"{name}, ms", num(row, "ms"), False
                yield f"{name}, CPU us/op", num(row, "CPU"), False


def api_figures(text: str) -> Iterator[Figure]:
    """AsyncAPIManager against raw aiohttp at each concurrency."""
    for _, rows in tables(text):
        for row in rows:
            name = f"api c{row['concurrency']}: AsyncAPIManager / aiohttp"
            rate = num(row, "AsyncAPIManager req/s") / num(row, "raw aiohttp req/s")
            yield f"{name} req/s", rate, True
            yield f"{name} CPU per req", num(row, "manager CPU") / num(row, "raw CPU"), False


def gateway_figures(text: str) -> Iterator[Figure]:
    """Every iogate target against the bare Starlette floor on the same database."""
    for _, rows in tables(text):
        floor = {r["target"].split()[-1]: r for r in rows if r["target"].startswith("floor ")}
        for row in rows:
            database = "PostgreSQL" if "PostgreSQL" in row["target"] else "SQLite"
            if not row["target"].startswith("iogate ") or database not in floor:
                continue
            name = f"gateway {row['target']} / floor"
            yield f"{name} req/s", ratio(row, floor[database], "req/s"), True
            yield f"{name} CPU per req", ratio(row, floor[database], "server CPU"), False


def logging_figures(text: str) -> Iterator[Figure]:
    """The default / warning throughput ratio, and the server CPU per request of each."""
    for database, figure in re.findall(
        r"^- iogate (\S+) default / warning: \*\*([\d.]+)", text, re.M
    ):
        yield f"logging {database}: default / warning req/s", float(figure), True
    for _, rows in tables(text):
        for row in rows:
            if row["target"].startswith("iogate "):
                yield f"logging {row['target']}: server CPU us/req", num(row, "server CPU"), False


def memory_figures(text: str) -> Iterator[Figure]:
    """Absolute MiB/KiB of the iogate rows (memory does not drift with load)."""
    for _, rows in tables(text):
        for row in rows:
            if not row["variant"].startswith("iogate") or "failed" in cell(row, "driver"):
                continue
            name = f"memory {row['resource']} {row['variant']}"
            yield f"{name}: iogate import MiB", num(row, "iogate import"), False
            yield f"{name}: open + ops MiB", num(row, "open + "), False
            if cell(row, "Python heap") != "-":
                yield f"{name}: Python heap KiB", num(row, "Python heap"), False


@dataclass(frozen=True)
class Script:
    name: str
    command: str  # after the interpreter, run from the tree's root
    quick: str  # what make bench-quick passes
    figures: Callable[[str], Iterator[Figure]]


SCRIPTS = [
    Script("db", "-m bench.db_bench", "--quick", db_figures),
    Script("redis", "bench/redis_bench.py", "--ops 5000", redis_figures),
    Script("batch", "bench/batch_bench.py", "--quick", batch_figures),
    Script("api", "bench/api_bench.py", "--requests 2000", api_figures),
    Script("gateway", "bench/gateway_bench.py", "--duration 2", gateway_figures),
    Script("logging", "bench/logging_cost.py", "--duration 2 --rounds 3", logging_figures),
    Script("memory", "bench/memory_bench.py", "--quick", memory_figures),
]


# -- running -------------------------------------------------------------------------


@dataclass
class Run:
    script: str
    tree: str
    round: int
    load: float  # 1-minute load average just before the subprocess
    seconds: float = 0.0
    status: str = "ok"


def check_tree(tree: Path) -> None:
    """The tree's iogate must be the one imported, not the installed one."""
    command = [sys.executable, "-c", "import iogate; print(iogate.__file__)"]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    imported = Path(done.stdout.strip() or "?").resolve()
    if not imported.is_relative_to((tree / "src").resolve()):
        raise SystemExit(f"{tree}: iogate is imported from {imported}, not {tree}/src")


def run_once(script: Script, tree: Path, run: Run, quick: bool, out: Path | None) -> str:
    command = [sys.executable, *script.command.split(), *(script.quick.split() if quick else [])]
    shown = " ".join(command[1:])
    print(f"== {run.tree} {run.round + 1}: {shown} (load {run.load:.2f})", file=sys.stderr)
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}  # this tree's iogate, first
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=3600)
    run.seconds = time.perf_counter() - started
    text = done.stdout
    if done.returncode != 0:
        run.status = f"exit {done.returncode}"
        text += f"\n\nexit {done.returncode}:\n{done.stderr[-3000:]}"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{script.name}-{run.tree}-{run.round + 1}.md").write_text(text, encoding="utf-8")
    return text if done.returncode == 0 else ""


def report(values: dict[str, dict[str, list[float]]], higher: dict[str, bool]) -> list[str]:
    lines = [
        f"| figure | better | before | after | after/before | worse > {THRESHOLD:.0%} |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, better in higher.items():
        before, after = values["before"].get(name), values["after"].get(name)
        if not before or not after:
            lines.append(f"| {name} | | | | | missing {'after' if before else 'before'} |")
            continue
        b, a = statistics.median(before), statistics.median(after)
        change = a / b if b else 1.0 if a == b else float("inf")
        worse = change < 1 - THRESHOLD if better else change > 1 + THRESHOLD
        flag = f"**{abs(change - 1):.1%} worse**" if worse else ""
        lines.append(
            f"| {name} | {'higher' if better else 'lower'} | {b:,.4g} | {a:,.4g} "
            f"| {change:.3f} | {flag} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", type=Path, required=True, help="root of the before checkout")
    parser.add_argument("--after", type=Path, required=True, help="root of the after checkout")
    parser.add_argument("--rounds", type=int, default=2, help="before/after pairs per script")
    parser.add_argument("--quick", action="store_true", help="each script's quick workload")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in SCRIPTS], metavar="SCRIPT")
    parser.add_argument("--out", type=Path, help="keep every subprocess's output in this folder")
    parser.add_argument("--reread", type=Path, help="re-read what --out kept; run nothing")
    args = parser.parse_args()
    chosen = [s for s in SCRIPTS if not args.only or s.name in args.only]
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for tree in trees.values():
        check_tree(tree)

    values: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    higher: dict[str, bool] = {}
    runs: list[Run] = []
    started = time.perf_counter()
    for script in chosen:
        for number_ in range(args.rounds):
            for label, tree in trees.items():  # A B A B ...
                load = float("nan") if args.reread else os.getloadavg()[0]
                run = Run(script.name, label, number_, load)
                runs.append(run)
                if args.reread:
                    text = (args.reread / f"{script.name}-{label}-{number_ + 1}.md").read_text()
                else:
                    text = run_once(script, tree, run, args.quick, args.out)
                try:
                    for name, value, better in script.figures(text):
                        higher.setdefault(name, better)
                        values[label].setdefault(name, []).append(value)
                except (KeyError, ValueError, ZeroDivisionError) as exc:
                    run.status = f"unreadable output: {exc}"

    minutes = (time.perf_counter() - started) / 60
    how = f"{args.rounds} round(s){', quick' if args.quick else ''}, {minutes:.0f} min"
    print(f"before {trees['before']}, after {trees['after']}: {how}\n")
    print("\n".join(report(values, higher)))
    print("\n| script | tree | round | load average before | seconds | status |")
    print("|---|---|---:|---:|---:|---|")
    for run in runs:
        print(
            f"| {run.script} | {run.tree} | {run.round + 1} | {run.load:.2f} "
            f"| {run.seconds:.0f} | {run.status} |"
        )


if __name__ == "__main__":
    main()
