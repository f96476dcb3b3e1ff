"""A ``transaction`` operation: its statements on one connection, all or nothing.

Each statement is the manager's own operation, recorded by the manager's
transaction (stats and events) as when it runs alone; the transaction as a
whole adds no record of its own, so ``/metrics`` counts statements however
they were grouped. Whether it committed is in the Result.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from iogate.backends.base import TransactionStatus
from iogate.core.deadline import Deadline
from iogate.core.errors import IogateError
from iogate.core.result import Result
from iogate.core.sqlguard import Access
from iogate.orchestrator.batch.plan import SQL_BACKENDS

if TYPE_CHECKING:
    from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator

__all__ = ["run_statements", "run_transaction"]


async def run_transaction(
    orchestrator: AsyncOperationOrchestrator,
    db_name: str,
    queries: Sequence[Any],
    *,
    deadline: Deadline | None = None,
    guard: Access | None = None,
) -> Result:
    """Run ``queries`` in one transaction on ``db_name``: all or nothing.

    Success: ``data`` is a list with each statement's rows, ``rows_affected``
    their sum. Failure: nothing was committed; ``error`` names the statement.
    ``duration_ms`` covers the whole transaction, BEGIN to COMMIT.
    """
    manager = orchestrator.databases.get(db_name)
    if manager is None:
        return Result.fail(
            f"unknown database {db_name!r}", "not_found", resource=db_name, operation="transaction"
        )
    if manager.backend not in SQL_BACKENDS:
        return Result.fail(
            f"{db_name!r} is a {manager.backend} database; transactions need a SQL database",
            "invalid_request",
            resource=db_name,
            operation="transaction",
        )
    if not isinstance(queries, Sequence) or isinstance(queries, str) or not queries:
        return Result.fail(
            "queries must be a non-empty list", "invalid_request", operation="transaction"
        )
    started = time.perf_counter()
    try:
        async with manager.transaction(deadline=deadline, guard=guard) as tx:
            result = await run_statements(tx, queries, db_name)
            if not result.success:
                tx.failed = True
        if result.success and tx.status is not TransactionStatus.COMMITTED:
            result = Result.fail(
                "transaction was rolled back",
                "query_error",
                resource=db_name,
                operation="transaction",
            )
    except IogateError as exc:
        result = Result.from_exception(exc, resource=db_name, operation="transaction")
    return result.with_timing((time.perf_counter() - started) * 1000)


async def run_statements(tx: Any, queries: Sequence[Any], db_name: str) -> Result:
    """The statements of a transaction operation on ``tx``; one combined Result."""
    outputs: list[Any] = []
    affected = 0
    for position, item in enumerate(queries):
        if not isinstance(item, Mapping) or not isinstance(item.get("query"), str):
            return Result.fail(
                f"queries[{position}]: missing field 'query'",
                "invalid_request",
                resource=db_name,
                operation="transaction",
            )
        result: Result = await tx.execute_query(item["query"], item.get("params"))
        if not result.success:
            return Result.fail(
                f"statement {position} failed, transaction rolled back: {result.error}",
                result.error_type or "query_error",
                resource=db_name,
                operation="transaction",
            )
        outputs.append(result.data)
        affected += result.rows_affected or 0
    return Result.ok(outputs, resource=db_name, operation="transaction", rows_affected=affected)
