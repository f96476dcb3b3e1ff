"""Atomic mode: a whole batch of SQL operations in one transaction, in order.

If one operation fails it keeps its own error and every other reports
``rolled_back``; a deadline that passes during COMMIT leaves every operation
``unknown_outcome``. Each statement is recorded by the manager's transaction
as its own operation; the batch adds no record of its own (its outcome is in
the Results).
"""

from __future__ import annotations

import time

from iogate.backends.base import TransactionStatus
from iogate.core.errors import IogateError
from iogate.core.result import Result
from iogate.orchestrator.batch.plan import spec_text
from iogate.orchestrator.batch.state import BatchRun, backstop
from iogate.orchestrator.batch.transaction import run_statements
from iogate.orchestrator.refs import resolve

__all__ = ["run_atomic"]


async def run_atomic(run: BatchRun, db_name: str) -> None:
    """Run every step of ``run`` on ``db_name`` in one transaction."""
    manager = run.orchestrator.databases[db_name]
    failed_at: int | None = None
    outcome_unknown = False
    try:
        guard = run.guard(db_name)
        # The manager honours the deadline on every step (open, acquire, BEGIN,
        # statements, COMMIT); the backstop, as in concurrent mode, ends the
        # batch shortly after it even if some step did not.
        async with (
            backstop(run.deadline),
            manager.transaction(deadline=run.deadline, guard=guard) as tx,
        ):
            for step in run.steps:
                step_started = time.perf_counter()
                try:
                    spec = resolve(step.spec, run.results, at=step.index, ids=run.ids)
                    query = None if step.kind == "transaction" else spec_text(spec, "query")
                except IogateError as exc:
                    result = Result.from_exception(exc, resource=db_name, operation=step.label)
                else:
                    if query is None:
                        result = await run_statements(tx, spec["queries"], db_name)
                    else:
                        result = await tx.execute_query(query, spec.get("params"))
                result.resource = db_name
                run.results[step.index] = result.with_timing(
                    (time.perf_counter() - step_started) * 1000
                )
                if not result.success:
                    failed_at = step.index
                    tx.failed = True
                    break
        committed = tx.status is TransactionStatus.COMMITTED
    except IogateError as exc:
        committed = False
        failure = Result.from_exception(exc, resource=db_name, operation="transaction")
        if failed_at is None:
            failed_at = next(
                (s.index for s in run.steps if run.results[s.index] is None),
                len(run.steps) - 1,
            )
            run.results[failed_at] = failure
    except TimeoutError:  # the backstop: a step outlived the deadline
        committed = False
        running = next((s.index for s in run.steps if run.results[s.index] is None), None)
        if failed_at is None and running is None:
            # Every statement had run: it was COMMIT that did not answer.
            outcome_unknown = True
        elif failed_at is None and running is not None:
            failed_at = running
            run.results[running] = Result.fail(
                "the batch deadline passed",
                "timeout",
                resource=db_name,
                operation="transaction",
            )
    if outcome_unknown:
        _unknown_outcome(run, db_name)
    elif committed:
        _committed(run)
    else:
        _rolled_back(run, failed_at if failed_at is not None else len(run.steps) - 1)


def _committed(run: BatchRun) -> None:
    for step in run.steps:
        done = run.results[step.index]
        run.results[step.index] = None
        run.finish(step.index, done or run.fail(step, "not run", "internal_error"))


def _rolled_back(run: BatchRun, culprit: int) -> None:
    """The culprit keeps its own failure; every other step reports the rollback."""
    for step in run.steps:
        own = run.results[step.index]
        run.results[step.index] = None
        if step.index == culprit and own is not None and not own.success:
            run.finish(step.index, own)
        else:
            run.finish(
                step.index,
                run.fail(
                    step,
                    f"rolled back: operation {culprit} of the atomic batch failed",
                    "rolled_back",
                ),
            )


def _unknown_outcome(run: BatchRun, db_name: str) -> None:
    for step in run.steps:
        run.results[step.index] = None
        run.finish(
            step.index,
            run.fail(
                step,
                f"the batch deadline passed during COMMIT on {db_name!r}: "
                "the transaction may or may not have been applied",
                "unknown_outcome",
            ),
        )
