"""Before/after: make bench's scripts on two checkouts, interleaved in one run.

Each script runs as a subprocess, alternately for the two trees (A B A B ...),
with ``PYTHONPATH=<tree>/src`` and ``cwd=<tree>``: each tree is measured by its
own copy of the benchmark, with the same arguments. Figures are read from the
script's Markdown output; where the script measures the raw driver (or the bare
Starlette floor) in the same process, the figure is the ratio to it, which a
drift of the machine between subprocesses barely moves. Each figure is the
median of the rounds per tree; the table flags one more than 3 % worse.
Left out: checks_cost, jobs_bench and overload (long; they measure other things).

Run: ``.venv/bin/python bench/compare_trees.py --before DIR --after DIR
[--rounds N] [--quick] [--only db,redis,...] [--out DIR]``; each DIR is the
root of a checkout (DIR/src, DIR/bench), e.g. a ``git worktree``.
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
Table = tuple[list[str], list[list[str]]]  # header cells, body rows' cells
THRESHOLD = 0.03  # a figure worse than this is flagged (issue 15: "no figure worse by > 3 %")


# -- reading the scripts' Markdown -------------------------------------------------


def tables(text: str) -> list[Table]:
    """Every Markdown table in ``text``: its header and its body rows, as cells."""
    found: list[Table] = []
    lines = [line.strip() for line in text.splitlines()]
    for at, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if at + 1 < len(lines) and re.fullmatch(r"\|[-:| ]+\|", lines[at + 1]):
            found.append((cells, []))
        elif found and not re.fullmatch(r"\|[-:| ]+\|", line):
            found[-1][1].append(cells)
    return found


def number(cell: str) -> float:
    """The first number in a cell: ``"1,234 (1,100-1,300)"`` -> 1234.0, ``"**0.52**"`` -> 0.52."""
    match = re.search(r"-?[\d,]*\.?\d+", cell)
    if match is None:
        raise ValueError(f"no number in {cell!r}")
    return float(match.group().replace(",", ""))


# -- one parser per script: its output -> figures ----------------------------------


def db_figures(text: str) -> Iterator[Figure]:
    """Each (work, concurrency) group ends with the raw driver (asyncpg pool, aiosqlite)."""
    groups: dict[tuple[str, str], list[list[str]]] = {}
    for _, rows in tables(text):
        for row in rows:
            groups.setdefault((row[0], row[1]), []).append(row)
    for (work, concurrency), rows in groups.items():
        raw = rows[-1]
        for row in rows:
            if row[2].startswith("iogate"):
                name = f"db {work}, c{concurrency}: iogate / {raw[2]}"
                yield f"{name} ops/s", number(row[3]) / number(raw[3]), True
                yield f"{name} CPU per op", number(row[6]) / number(raw[6]), False


def redis_figures(text: str) -> Iterator[Figure]:
    """Columns: client, concurrency, GET ops/s, SET ops/s, GET CPU, SET CPU."""
    for _, rows in tables(text):
        raw = {row[1]: row for row in rows if "(raw)" in row[0]}
        for row in rows:
            if row[1] not in raw or row is raw[row[1]]:
                continue
            label = row[0].removeprefix("AsyncRedisManager ")
            for verb, rate, cpu in (("GET", 2, 4), ("SET", 3, 5)):
                name = f"redis {label}, c{row[1]} {verb}: manager / raw"
                yield f"{name} ops/s", number(row[rate]) / number(raw[row[1]][rate]), True
                yield f"{name} CPU per op", number(row[cpu]) / number(raw[row[1]][cpu]), False


def batch_figures(text: str) -> Iterator[Figure]:
    """Ratios to the raw ``asyncio.gather`` where the table has it; else ms and CPU us/op."""
    for header, rows in tables(text):
        title = header[0].split(" (")[0]
        raw = next((row for row in rows if "raw driver" in row[0]), None)
        for row in rows:
            if row is raw:
                continue
            name = f"batch {title}: {row[0]}"
            if raw is not None:
                yield f"{name}, ms / raw gather", number(row[1]) / number(raw[1]), False
                yield f"{name}, CPU / raw gather", number(row[3]) / number(raw[3]), False
            else:
                yield f"{name}, ms", number(row[1]), False
                yield f"{name}, CPU us/op", number(row[3]), False


def api_figures(text: str) -> Iterator[Figure]:
    """Columns: concurrency, raw req/s, manager req/s, ratio, raw CPU, manager CPU."""
    for _, rows in tables(text):
        for row in rows:
            name = f"api c{row[0]}: AsyncAPIManager / aiohttp"
            yield f"{name} req/s", number(row[2]) / number(row[1]), True
            yield f"{name} CPU per req", number(row[5]) / number(row[4]), False


def gateway_figures(text: str) -> Iterator[Figure]:
    """Every iogate target against the bare Starlette floor on the same database."""
    for _, rows in tables(text):
        floor = {row[0].split()[-1]: row for row in rows if row[0].startswith("floor ")}
        for row in rows:
            database = "PostgreSQL" if "PostgreSQL" in row[0] else "SQLite"
            if not row[0].startswith("iogate ") or database not in floor:
                continue
            name = f"gateway {row[0]} / floor"
            yield f"{name} req/s", number(row[1]) / number(floor[database][1]), True
            yield f"{name} CPU per req", number(row[4]) / number(floor[database][4]), False


def logging_figures(text: str) -> Iterator[Figure]:
    """The default / warning throughput ratio, and the server CPU per request of each."""
    for database, ratio in re.findall(
        r"^- iogate (\S+) default / warning: \*\*([\d.]+)", text, re.M
    ):
        yield f"logging {database}: default / warning req/s", float(ratio), True
    for _, rows in tables(text):
        for row in rows:
            if row[0].startswith("iogate "):
                yield f"logging {row[0]}: server CPU us/req", number(row[4]), False


def memory_figures(text: str) -> Iterator[Figure]:
    """Absolute MiB/KiB of the iogate rows (memory does not drift with load)."""
    for _, rows in tables(text):
        for row in rows:
            if not row[1].startswith("iogate") or row[2].startswith("failed"):
                continue
            name = f"memory {row[0]} {row[1]}"
            yield f"{name}: iogate import MiB", number(row[3]), False
            yield f"{name}: open + ops MiB", number(row[4]), False
            if row[5] != "-":
                yield f"{name}: Python heap KiB", number(row[5]), False


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


def tree_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree / "src")}


def check_tree(tree: Path) -> None:
    """The tree's iogate must be the one imported, not the installed one."""
    command = [sys.executable, "-c", "import iogate; print(iogate.__file__)"]
    done = subprocess.run(command, cwd=tree, env=tree_env(tree), capture_output=True, text=True)
    imported = Path(done.stdout.strip() or "?").resolve()
    if not imported.is_relative_to((tree / "src").resolve()):
        raise SystemExit(f"{tree}: iogate is imported from {imported}, not {tree}/src")


def run_once(script: Script, tree: Path, run: Run, quick: bool, out: Path | None) -> str:
    command = [sys.executable, *script.command.split(), *(script.quick.split() if quick else [])]
    shown = " ".join(command[1:])
    print(f"== {run.tree} {run.round + 1}: {shown} (load {run.load:.2f})", file=sys.stderr)
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=tree, env=tree_env(tree), capture_output=True, text=True, timeout=3600
    )
    run.seconds = time.perf_counter() - started
    text = done.stdout
    if done.returncode != 0:
        run.status = f"exit {done.returncode}"
        text += f"\n\nexit {done.returncode}:\n{done.stderr[-3000:]}"
    if out is not None:
        (out / f"{script.name}-{run.tree}-{run.round + 1}.md").write_text(text, encoding="utf-8")
    return text if done.returncode == 0 else ""


def fmt(value: float) -> str:
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


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
        ratio = a / b if b else 1.0 if a == b else float("inf")
        worse = ratio < 1 - THRESHOLD if better else ratio > 1 + THRESHOLD
        flag = f"**{abs(ratio - 1):.1%} worse**" if worse else ""
        lines.append(
            f"| {name} | {'higher' if better else 'lower'} | {fmt(b)} | {fmt(a)} "
            f"| {ratio:.3f} | {flag} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", type=Path, required=True, help="root of the before checkout")
    parser.add_argument("--after", type=Path, required=True, help="root of the after checkout")
    parser.add_argument("--rounds", type=int, default=2, help="before/after pairs per script")
    parser.add_argument("--quick", action="store_true", help="each script's quick workload")
    parser.add_argument("--only", help="comma-separated: " + ", ".join(s.name for s in SCRIPTS))
    parser.add_argument("--out", type=Path, help="keep every subprocess's output in this folder")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else [s.name for s in SCRIPTS]
    if unknown := set(names) - {s.name for s in SCRIPTS}:
        parser.error(f"--only: no script {', '.join(unknown)}")
    chosen = [s for s in SCRIPTS if s.name in names]
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for tree in trees.values():
        check_tree(tree)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)

    values: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    higher: dict[str, bool] = {}
    runs: list[Run] = []
    started = time.perf_counter()
    for script in chosen:
        for number_ in range(args.rounds):
            for label, tree in trees.items():  # A B A B ...
                run = Run(script.name, label, number_, os.getloadavg()[0])
                runs.append(run)
                text = run_once(script, tree, run, args.quick, args.out)
                try:
                    for name, value, better in script.figures(text):
                        higher.setdefault(name, better)
                        values[label].setdefault(name, []).append(value)
                except (ValueError, IndexError, ZeroDivisionError) as exc:
                    run.status = f"unreadable output: {exc}"

    print(
        f"before: {trees['before']}, after: {trees['after']}; {args.rounds} interleaved "
        f"round(s){', quick' if args.quick else ''}; median per tree; "
        f"{(time.perf_counter() - started) / 60:.0f} min in all.\n"
    )
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
