"""``iogate run FILE.json``: execute a batch file with progress and a summary.

The file holds either a list of operations or an object
``{"operations": [...], "concurrency": 10, "atomic": false}`` (the body of
``POST /batch/execute``). Resources come from the settings, as for
``iogate serve``. Exit status: 0 when every operation succeeded, 1 when
some failed, 2 when the file itself is unusable.

``--output`` holds every Result as JSON, failed ones included. It is opened
before the batch runs (a path that cannot be written stops the command
before any operation does) and encoded as the gateway encodes responses:
keys that are ``str`` subclasses (aiohttp's ``istr`` header names) or not
strings at all, and any value orjson refuses (an integer beyond 64 bits, a
value nested deeper than 254 levels) cost that one Result its ``data``,
replaced by an error naming why, never the file.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from iogate.core.result import Result
from iogate.gateway.settings import Settings
from iogate.orchestrator.batch import DEFAULT_CONCURRENCY, execute_batch
from iogate.orchestrator.operations import load_operations

__all__ = ["BatchFile", "load_batch_file", "run_batch_file"]

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_UNUSABLE = 2


class BatchFile:
    """What a batch file asks for."""

    def __init__(self, operations: list[Any], *, concurrency: int, atomic: bool) -> None:
        self.operations = operations
        self.concurrency = concurrency
        self.atomic = atomic


def load_batch_file(path: Path) -> BatchFile:
    """Parse ``path``; ValueError says what is wrong with it."""
    try:
        raw = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror})") from None
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from None
    if isinstance(raw, list):
        return BatchFile(raw, concurrency=DEFAULT_CONCURRENCY, atomic=False)
    if not isinstance(raw, dict) or not isinstance(raw.get("operations"), list):
        raise ValueError(f'{path}: expected a list of operations or {{"operations": [...]}}')
    unknown = sorted(set(raw) - {"operations", "concurrency", "atomic"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}")
    concurrency = raw.get("concurrency", DEFAULT_CONCURRENCY)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"{path}: concurrency must be a positive integer")
    atomic = raw.get("atomic", False)
    if not isinstance(atomic, bool):
        raise ValueError(f"{path}: atomic must be true or false")
    return BatchFile(raw["operations"], concurrency=concurrency, atomic=atomic)


def run_batch_file(
    path: Path,
    settings: Settings,
    output: Path | None,
    *,
    console: Console | None = None,
) -> int:
    """Run the batch in ``path``; print progress and a summary; return the exit status."""
    console = console or Console()
    try:
        batch = load_batch_file(path)
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_UNUSABLE
    try:
        sink = output.open("wb") if output is not None else None
    except OSError as exc:
        console.print(
            f"[bold red]error:[/] {escape(str(output))}: cannot write ({exc.strerror})",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_UNUSABLE
    try:
        started = time.perf_counter()
        results = asyncio.run(_run(batch, settings, console))
        duration = time.perf_counter() - started
        _summary(console, results, duration)
        if sink is not None:
            sink.write(encode_results(results))
            console.print(f"results written to {escape(str(output))}", highlight=False)
    finally:
        if sink is not None:
            sink.close()
    return EXIT_OK if all(r.success for r in results) else EXIT_FAILURES


_ENCODE_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS


def encode_results(results: list[Result]) -> bytes:
    """Every Result as a JSON list; a Result orjson refuses loses only its ``data``."""
    try:
        return orjson.dumps([r.to_dict() for r in results], default=str, option=_ENCODE_OPTIONS)
    except orjson.JSONEncodeError:
        pass
    from iogate.gateway.responses import encodable

    items = []
    for result in results:
        # Two envelopes: the list, and the Result object around its data.
        fallback = encodable(result, envelope=2)
        item = fallback.to_dict()
        if fallback is not result and result.headers is not None:
            item["headers"] = result.headers
        try:
            orjson.dumps(item, default=str, option=_ENCODE_OPTIONS)
        except orjson.JSONEncodeError as exc:
            error = f"the result cannot be written as JSON: {exc}"
            item = {**item, "headers": None, "error": error}
        items.append(item)
    return orjson.dumps(items, default=str, option=_ENCODE_OPTIONS)


async def _run(batch: BatchFile, settings: Settings, console: Console) -> list[Result]:
    # The gateway's builder, so a batch file sees exactly what `iogate serve` serves.
    from iogate.gateway.app import build_orchestrator

    orchestrator = build_orchestrator(settings)
    async with orchestrator:
        load_operations(orchestrator, settings.operations)
        with Progress(
            TextColumn("[bold]running"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task("batch", total=len(batch.operations), failed=0)
            failed = 0

            def advance(index: int, result: Result) -> None:
                nonlocal failed
                failed += not result.success
                progress.update(task, advance=1, failed=failed)

            return await execute_batch(
                orchestrator,
                batch.operations,
                concurrency=batch.concurrency,
                atomic=batch.atomic,
                max_rows=settings.gateway.max_rows,
                on_result=advance,
            )


def _summary(console: Console, results: list[Result], duration: float) -> None:
    failures = Counter(r.error_type or "unknown" for r in results if not r.success)
    table = Table(title="batch summary", show_header=True)
    table.add_column("outcome")
    table.add_column("operations", justify="right")
    table.add_row("total", str(len(results)))
    table.add_row("[green]succeeded[/]", str(len(results) - sum(failures.values())))
    for error_type, count in sorted(failures.items()):
        table.add_row(f"[red]failed: {error_type}[/]", str(count))
    table.add_row("duration", f"{duration:.3f} s")
    console.print(table)


# -- iogate run FILE --job -------------------------------------------------------

JOB_STATE_SUFFIX = ".iogate-job"
FOLLOW_POLL = 0.25  # seconds between progress reads


def _read_state(state: Path) -> str:
    try:
        return state.read_text().strip()
    except FileNotFoundError:
        return ""


def job_state_path(path: Path) -> Path:
    """Where ``--job`` keeps the id of the job it follows for ``path``."""
    return path.with_name(path.name + JOB_STATE_SUFFIX)


def run_job_file(
    path: Path,
    settings: Settings,
    output: Path | None,
    *,
    console: Console | None = None,
) -> int:
    """Submit ``path`` as a durable job (or resume following the job an
    interrupted run submitted for it) and follow it to the end."""
    console = console or Console()
    try:
        batch = load_batch_file(path)
        if batch.atomic:
            raise ValueError(f"{path}: a job cannot be atomic; use `iogate run` without --job")
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_UNUSABLE
    state = job_state_path(path)
    followed: list[str] = []
    try:
        return asyncio.run(_follow_job(batch, settings, output, state, console, followed))
    except KeyboardInterrupt:
        where = (
            "the workers go on with it"
            if settings.jobs.broker
            else "it resumes when you run this command again"
        )
        job = followed[0] if followed else "the job"
        console.print(
            f"\nstopped following {job}: {where} (`iogate run {escape(str(path))} --job` "
            "picks the display up again)",
            highlight=False,
        )
        return 130


async def _follow_job(
    batch: BatchFile,
    settings: Settings,
    output: Path | None,
    state: Path,
    console: Console,
    followed: list[str],
) -> int:
    from iogate.core.errors import IogateError
    from iogate.gateway.app import build_orchestrator
    from iogate.jobs.model import JobNotFoundError
    from iogate.jobs.service import JobService

    jobs = settings.jobs
    orchestrator = build_orchestrator(settings)
    async with orchestrator:
        load_operations(orchestrator, settings.operations)
        try:
            service = await JobService.start(
                orchestrator,
                store=jobs.store,
                broker=jobs.broker,
                queue=jobs.queue,
                ack_wait=jobs.ack_wait,
                chunk_size=jobs.chunk_size,
                max_operations=jobs.max_operations,
                max_params=settings.gateway.max_params,
                runner_chunks=jobs.worker_chunks,
            )
        except IogateError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            return EXIT_UNUSABLE
        async with service:
            job_id = await asyncio.to_thread(_read_state, state)
            if job_id:
                try:
                    await service.progress(job_id)
                    console.print(f"resuming the display of job {job_id}", highlight=False)
                except JobNotFoundError:
                    job_id = ""
            if not job_id:
                try:
                    handle = await service.submit(
                        batch.operations,
                        concurrency=batch.concurrency,
                        max_rows=settings.gateway.max_rows,
                    )
                except IogateError as exc:
                    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
                    return EXIT_UNUSABLE
                job_id = handle.job_id
                await asyncio.to_thread(state.write_text, job_id + "\n")
                console.print(f"submitted job {job_id}", highlight=False)
            followed.append(job_id)
            started = time.perf_counter()
            progress = await service.progress(job_id)
            with Progress(
                TextColumn(f"[bold]job {job_id[:8]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[failed]} failed"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            ) as bar:
                task = bar.add_task("job", total=progress.total, failed=progress.failed)
                while True:
                    bar.update(task, completed=progress.done, failed=progress.failed)
                    if progress.finished:
                        break
                    await asyncio.sleep(FOLLOW_POLL)  # the runner may be another process
                    progress = await service.progress(job_id)
            results = [
                Result.from_dict(stored.result)
                async for stored in service.iter_results(job_id, page=1000)
            ]
            await asyncio.to_thread(state.unlink, missing_ok=True)
    _summary(console, results, time.perf_counter() - started)
    if progress.status != "done":
        console.print(f"job {job_id} was {progress.status}", highlight=False)
    if output is not None:
        try:
            await asyncio.to_thread(output.write_bytes, encode_results(results))
        except OSError as exc:
            console.print(
                f"[bold red]error:[/] {escape(str(output))}: cannot write ({exc.strerror})",
                highlight=False,
            )
            return EXIT_UNUSABLE
        console.print(f"results written to {escape(str(output))}", highlight=False)
    ok = progress.status == "done" and all(r.success for r in results)
    return EXIT_OK if ok else EXIT_FAILURES
