"""``execute_batch``: plan a batch, then run it concurrently or atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from iogate.core import events
from iogate.core.deadline import Deadline
from iogate.core.errors import InvalidRequestError
from iogate.core.params import MAX_PARAMS
from iogate.core.result import Result
from iogate.core.sqlguard import GuardFor
from iogate.orchestrator.batch.atomic import run_atomic
from iogate.orchestrator.batch.concurrent import run_concurrent
from iogate.orchestrator.batch.plan import BatchRefusedError, check_atomic, plan_batch
from iogate.orchestrator.batch.state import BatchRun, OnResult, trusted

if TYPE_CHECKING:
    from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator

__all__ = ["DEFAULT_CONCURRENCY", "MAX_CONCURRENCY", "execute_batch"]

DEFAULT_CONCURRENCY = 10
MAX_CONCURRENCY = 1000


async def execute_batch(
    orchestrator: AsyncOperationOrchestrator,
    operations: Sequence[Any],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    atomic: bool = False,
    deadline: Deadline | None = None,
    max_rows: int | None = None,
    on_result: OnResult | None = None,
    group: bool = True,
    guard: GuardFor | None = None,
    max_params: int = MAX_PARAMS,
    finished: Mapping[int, Result] | None = None,
) -> list[Result]:
    """One Result per operation, in order; never raises for an operation failure.

    ``finished``: operations that already ran (a job's chunk delivered
    again), by index: they are not run again, their Results are returned as
    given and serve the references of the others; ``on_result`` is not
    called for them. Not with ``atomic``.

    ``on_result(index, result)`` is called as each operation finishes (for a
    progress display). ``group=False`` turns off pipelining/grouping.
    ``guard(db_name)`` gives the access under which the batch's raw SQL on
    that database runs as untrusted SQL (None: trusted); named operations are
    the config's own SQL and are never guarded. A statement with more than
    ``max_params`` parameters, or a higher position, is malformed.
    """
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidRequestError(
            f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"
        )
    deadline = deadline or Deadline.never()
    try:
        steps = plan_batch(operations, max_params=max_params)
        db_name = check_atomic(orchestrator, steps) if atomic else None
    except BatchRefusedError as exc:
        refused = [Result.fail(str(exc), "invalid_request") for _ in operations]
        if on_result is not None:
            for index, result in enumerate(refused):
                on_result(index, result)
        return refused
    if finished and atomic:
        raise InvalidRequestError("an atomic batch runs whole: finished operations cannot be given")
    run = BatchRun(orchestrator, steps, deadline, max_rows, on_result, guard or trusted)
    if finished:
        run.prefill(finished)
    tracer = events.tracer
    span = tracer.start("batch", steps, atomic) if tracer is not None else None
    try:
        if db_name is not None:
            await run_atomic(run, db_name)
        else:
            await run_concurrent(run, concurrency, group)
    except BaseException as exc:
        if tracer is not None:
            tracer.finish(span, None, exc)
        raise
    results = run.collect()
    if tracer is not None:
        tracer.finish(span, results)
    return results
