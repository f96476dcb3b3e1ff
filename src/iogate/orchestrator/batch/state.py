"""A running batch's bookkeeping: one Result slot per step, filled once.

Both ways of running a batch (:mod:`.concurrent`, :mod:`.atomic`) work on a
:class:`BatchRun`: they call :meth:`BatchRun.finish` as each operation ends,
which wakes the operations that reference it and reports progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from iogate.core.deadline import Deadline
from iogate.core.errors import ErrorType
from iogate.core.result import Result
from iogate.core.sqlguard import Access, GuardFor
from iogate.orchestrator.batch.plan import Step

if TYPE_CHECKING:
    from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator

__all__ = ["BatchRun", "OnResult", "backstop", "trusted"]

OnResult = Callable[[int, Result], None]
# The outer deadline backstop fires a little after the deadline itself, so
# that managers, which honour the deadline, report their own timeouts first.
_DEADLINE_GRACE = 0.1


def backstop(deadline: Deadline) -> asyncio.Timeout:
    """A timeout shortly after ``deadline``: it ends the batch even if some
    step did not honour the deadline."""
    remaining = deadline.remaining()
    return asyncio.timeout(None if remaining is None else remaining + _DEADLINE_GRACE)


def trusted(db_name: str) -> Access | None:
    """The default guard: the batch's SQL is the caller's own."""
    return None


class BatchRun:
    """The steps of one batch, what it runs under, and their Results so far."""

    def __init__(
        self,
        orchestrator: AsyncOperationOrchestrator,
        steps: list[Step],
        deadline: Deadline,
        max_rows: int | None,
        on_result: OnResult | None,
        guard: GuardFor,
    ) -> None:
        self.orchestrator = orchestrator
        self.guard = guard
        self.steps = steps
        self.deadline = deadline
        self.max_rows = max_rows
        self.on_result = on_result
        self.results: list[Result | None] = [None] * len(steps)
        # Only a referenced operation needs an event for others to wait on.
        referenced = {d for s in steps for d in s.depends_on}
        self.done = {i: asyncio.Event() for i in referenced}
        self.ids = {s.step_id: s.index for s in steps if s.step_id is not None}

    def prefill(self, finished: Mapping[int, Result]) -> None:
        """Results of operations that ran before; they are not run again."""
        for index, result in finished.items():
            if 0 <= index < len(self.results):
                self.results[index] = result
                event = self.done.get(index)
                if event is not None:
                    event.set()

    def finish(self, index: int, result: Result) -> None:
        """Record step ``index``'s outcome; a later call for it is ignored."""
        if self.results[index] is not None:
            return
        self.results[index] = result
        event = self.done.get(index)
        if event is not None:
            event.set()
        if self.on_result is not None:
            self.on_result(index, result)

    def fail(self, step: Step, message: str, error_type: ErrorType) -> Result:
        """A failed Result labelled as ``step``'s."""
        return Result.fail(message, error_type, resource=step.resource, operation=step.label)

    def collect(self) -> list[Result]:
        return [
            r if r is not None else Result.fail("not run", "internal_error") for r in self.results
        ]
