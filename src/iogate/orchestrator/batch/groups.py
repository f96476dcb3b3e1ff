"""Running a group (see :mod:`.grouping`): one round trip, one Result per step.

The manager records what it runs: a key-value pipeline is its ``pipeline``
operation, each statement of a SQL group is one of its operations (through
``execute_many`` or ``manager.transaction()``). The group adds no record of
its own. Each step's ``duration_ms`` is its share of the group's time, the
group's duration divided evenly: the steps ran together, none alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from iogate.backends.base import TransactionStatus
from iogate.core.deadline import Deadline
from iogate.core.result import Result
from iogate.core.sqlguard import Access
from iogate.orchestrator.batch.plan import Step

if TYPE_CHECKING:
    from iogate.backends.base import AsyncDatabaseManager

__all__ = ["run_kv_group", "run_sql_group"]

_KV_READS = frozenset({"get", "exists", "ttl", "mget", "hget", "hgetall", "lrange", "smembers"})


async def run_kv_group(
    manager: AsyncDatabaseManager, steps: Sequence[Step], deadline: Deadline, guard: Access | None
) -> list[Result | None]:
    """Key-value steps as one pipeline: a Result per step, in order, where
    None asks the caller to run that step alone."""
    commands = []
    for step in steps:
        params = dict(step.spec["params"])
        # The seed passes the key as the query; a pipeline entry has no query.
        params.setdefault("key", step.spec["query"])
        commands.append(params)
    started = time.perf_counter()
    outcome = await manager.execute_query(
        "pipeline",
        {"operation": "pipeline", "operations": commands},
        deadline=deadline,
        guard=guard,
    )
    share = round((time.perf_counter() - started) * 1000 / len(steps), 3)
    data = outcome.data if isinstance(outcome.data, list) else None
    results: list[Result | None] = []
    if outcome.success and data is not None and len(data) == len(steps):
        for step, value in zip(steps, data, strict=True):
            result = Result.ok(value, resource=manager.name, operation=step.label)
            result.duration_ms = share
            results.append(result)
        return results
    if outcome.error_type == "invalid_request" and data is None:
        # An entry was refused while parsing, before anything was sent:
        # run each alone, so only the bad one fails.
        return [None] * len(steps)
    if data is None or len(data) != len(steps):
        # The pipeline as a whole failed (connection): nothing is known
        # per operation, so each reports the pipeline's error.
        return [
            Result.fail(
                outcome.error or "pipeline failed",
                outcome.error_type or "query_error",
                resource=manager.name,
                operation=step.label,
            )
            for step in steps
        ]
    # Some entries failed. A write never answers None, so a None slot on
    # a write is its failure; a read is re-run alone (reads are safe to repeat).
    for step, value in zip(steps, data, strict=True):
        if value is not None:
            result = Result.ok(value, resource=manager.name, operation=step.label)
            results.append(result.with_timing(share))
        elif step.label in _KV_READS:
            results.append(None)
        else:
            results.append(
                Result.fail(
                    outcome.error or "pipeline entry failed",
                    outcome.error_type or "query_error",
                    resource=manager.name,
                    operation=step.label,
                )
            )
    return results


async def run_sql_group(
    manager: AsyncDatabaseManager, steps: Sequence[Step], deadline: Deadline, guard: Access | None
) -> list[Result] | None:
    """The same statement for each step, in one transaction on one connection.

    A Result per step, in order; None when the group rolled back (nothing
    was written): the caller runs each step alone, so a failure stays its own.
    """
    query = steps[0].spec["query"]
    params_list = [step.spec.get("params") for step in steps]
    started = time.perf_counter()
    execute_many = getattr(manager, "execute_many", None)
    results: list[Result] | None
    if execute_many is not None:
        results = await execute_many(query, params_list, deadline=deadline, guard=guard)
    else:
        results = await _in_one_transaction(manager, query, params_list, deadline, guard)
    if results is None:
        return None
    share = round((time.perf_counter() - started) * 1000 / len(steps), 3)
    for result in results:
        result.resource = manager.name
        result.duration_ms = share
    return results


async def _in_one_transaction(
    manager: AsyncDatabaseManager,
    query: str,
    params_list: list[Any],
    deadline: Deadline,
    guard: Access | None,
) -> list[Result] | None:
    """Every statement on one connection in one transaction; None if rolled back."""
    results: list[Result] = []
    async with manager.transaction(deadline=deadline, guard=guard) as tx:
        for params in params_list:
            result = await tx.execute_query(query, params)
            if not result.success:
                break
            results.append(result)
    return results if tx.status is TransactionStatus.COMMITTED else None
