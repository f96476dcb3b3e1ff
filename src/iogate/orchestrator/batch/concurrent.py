"""Concurrent mode: independent operations at most ``concurrency`` at a time.

Workers take units (a step, or a group of steps) in index order from one
shared iterator. A step that references others waits for them, and is
skipped with ``dependency_failed`` if one of them failed. One operation's
failure never reaches another: whatever a step raises becomes its Result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from iogate.core.errors import IogateError
from iogate.core.result import Result
from iogate.orchestrator.batch.grouping import Group, Unit, plan_units
from iogate.orchestrator.batch.groups import run_kv_group, run_sql_group
from iogate.orchestrator.batch.plan import Step, spec_text
from iogate.orchestrator.batch.state import BatchRun, backstop
from iogate.orchestrator.batch.transaction import run_transaction
from iogate.orchestrator.refs import resolve

__all__ = ["run_concurrent"]


async def run_concurrent(run: BatchRun, concurrency: int, group: bool) -> None:
    """Run every step of ``run`` not yet finished; each ends with a Result."""
    pending = [step for step in run.steps if run.results[step.index] is None]
    units: Iterator[Unit] = iter(plan_units(pending, run.orchestrator.databases, group=group))

    async def worker() -> None:
        # Units are taken in index order, and an operation only waits for
        # earlier ones, which some worker has already taken: no deadlock.
        for unit in units:
            if isinstance(unit, Group):
                await _run_group(run, unit)
            else:
                await _run_step(run, run.steps[unit])

    workers = min(concurrency, len(run.steps)) or 1
    try:
        async with backstop(run.deadline):
            await asyncio.gather(*(worker() for _ in range(workers)))
    except TimeoutError:
        pass
    for step in run.steps:
        if run.results[step.index] is None:
            run.finish(step.index, run.fail(step, "the batch deadline passed", "timeout"))


async def _run_step(run: BatchRun, step: Step) -> None:
    if step.error is not None:
        run.finish(step.index, step.error)
        return
    for dependency in sorted(step.depends_on):
        await run.done[dependency].wait()
    for dependency in sorted(step.depends_on):
        upstream = run.results[dependency]
        if upstream is None or not upstream.success:
            reason = upstream.error_type if upstream is not None else "not run"
            run.finish(
                step.index,
                run.fail(
                    step,
                    f"skipped: operation {dependency}, which it references, failed ({reason})",
                    "dependency_failed",
                ),
            )
            return
    if run.deadline.expired():
        run.finish(step.index, run.fail(step, "the batch deadline passed", "timeout"))
        return
    try:
        spec = resolve(step.spec, run.results, at=step.index, ids=run.ids)
        result = await _dispatch(run, step.kind, spec)
    except IogateError as exc:
        result = Result.from_exception(exc, resource=step.resource, operation=step.label)
    except Exception as exc:  # one operation must never break the batch
        result = Result.from_exception(exc, resource=step.resource, operation=step.label)
    run.finish(step.index, result)


async def _dispatch(run: BatchRun, kind: str, spec: Mapping[str, Any]) -> Result:
    orchestrator = run.orchestrator
    if kind == "database":
        return await orchestrator.execute_database_operation(
            spec_text(spec, "db_name"),
            spec_text(spec, "query"),
            spec.get("params"),
            deadline=run.deadline,
            max_rows=run.max_rows,
            guard=run.guard(spec_text(spec, "db_name")),
        )
    if kind == "api":
        return await orchestrator.execute_api_operation(
            spec_text(spec, "api_name"),
            spec_text(spec, "method"),
            spec_text(spec, "endpoint"),
            spec.get("data"),
            spec.get("params"),
            headers=spec.get("headers"),
            deadline=run.deadline,
        )
    if kind == "transaction":
        db_name = spec_text(spec, "db_name")
        return await run_transaction(
            orchestrator,
            db_name,
            spec["queries"],
            deadline=run.deadline,
            guard=run.guard(db_name),
        )
    from iogate.orchestrator.operations import execute_named_operation

    params = spec.get("params") or {}
    return await execute_named_operation(
        orchestrator, spec_text(spec, "name"), params, deadline=run.deadline
    )


async def _run_group(run: BatchRun, group: Group) -> None:
    steps = [run.steps[i] for i in group.indices]
    if run.deadline.expired():
        for step in steps:
            run.finish(step.index, run.fail(step, "the batch deadline passed", "timeout"))
        return
    manager = run.orchestrator.databases[group.db_name]
    try:
        guard = run.guard(manager.name)
        outcomes: Sequence[Result | None] | None
        if group.kind == "kv":
            outcomes = await run_kv_group(manager, steps, run.deadline, guard)
        else:
            outcomes = await run_sql_group(manager, steps, run.deadline, guard)
        if outcomes is None:  # rolled back: each alone, so a failure stays its own
            outcomes = [None] * len(steps)
        for step, result in zip(steps, outcomes, strict=True):
            if result is None:
                await _run_step(run, step)
            else:
                run.finish(step.index, result)
    except Exception as exc:  # a group failure is reported per operation
        for step in steps:
            run.finish(
                step.index,
                Result.from_exception(exc, resource=step.resource, operation=step.label),
            )
