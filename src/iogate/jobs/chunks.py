"""Cutting a job into chunks, and preparing a chunk to run.

A chunk is a run of consecutive operations, ``chunk_size`` of them, except
that operations referring to each other (``$ref``/``$fmt``, see
:mod:`iogate.orchestrator.refs`) always land in the same chunk: a boundary
is placed only where no later operation refers to an earlier one across it,
so a chunk grows past ``chunk_size`` until such a place comes. A chain of
references longer than ``max_chunk`` operations is refused up front (it
could not be spread over workers, and one chunk must stay small enough to
redeliver cheaply).

Inside a chunk, references by index are moved to the chunk's own numbering
(:func:`iogate.orchestrator.refs.rebase`); each operation keeps its place in
the job for its stored result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from iogate.core.params import MAX_PARAMS
from iogate.orchestrator.batch import BatchRefusedError, plan_batch
from iogate.orchestrator.refs import rebase

__all__ = ["IDEMPOTENCY_HEADER", "KEY_MARKER", "idempotency_key", "plan_chunks", "prepare_chunk"]

IDEMPOTENCY_HEADER = "Idempotency-Key"
# {"$idempotency_key": null} anywhere in an operation: its key, as a string.
KEY_MARKER = "$idempotency_key"
# A chunk grows past chunk_size only to keep references together, up to this.
MAX_CHUNK_FACTOR = 10


def plan_chunks(
    operations: Sequence[Any],
    *,
    chunk_size: int,
    max_params: int = MAX_PARAMS,
    max_chunk: int | None = None,
) -> list[tuple[int, int]]:
    """(start, end) ranges covering ``operations`` in order.

    Raises BatchRefusedError for a job refused as a whole: what
    :func:`~iogate.orchestrator.batch.plan_batch` refuses (a forward or
    unknown reference, a repeated id) and a chain of references longer
    than ``max_chunk`` (default ``chunk_size * MAX_CHUNK_FACTOR``).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    steps = plan_batch(operations, max_params=max_params)
    limit = max_chunk if max_chunk is not None else chunk_size * MAX_CHUNK_FACTOR
    count = len(steps)
    # reach[i]: the earliest operation i depends on, directly or not.
    reach = list(range(count))
    for step in steps:
        for dependency in step.depends_on:
            reach[step.index] = min(reach[step.index], reach[dependency])
    # A chunk may start at b when nothing from b on reaches before b.
    earliest_after = [0] * (count + 1)
    earliest_after[count] = count
    for index in range(count - 1, -1, -1):
        earliest_after[index] = min(reach[index], earliest_after[index + 1])
    chunks: list[tuple[int, int]] = []
    start = 0
    while start < count:
        end = min(start + chunk_size, count)
        while end < count and earliest_after[end] < end:
            end += 1
        if end - start > limit:
            raise BatchRefusedError(
                f"operations {start} to {end - 1} refer to each other in one chain of "
                f"{end - start} operations; a job keeps such a chain in one chunk of at most "
                f"{limit} ([jobs] chunk_size x {MAX_CHUNK_FACTOR}): split the job, or refer "
                "to fewer earlier results"
            )
        chunks.append((start, end))
        start = end
    return chunks


def idempotency_key(job_id: str, index: int) -> str:
    """The key a job's operation carries, the same on every delivery."""
    return f"iogate-{job_id}-{index}"


def prepare_chunk(operations: Sequence[Any], *, job_id: str, start: int) -> list[Any]:
    """The chunk's operations ready for ``execute_batch``: references moved to
    the chunk's numbering, ``{"$idempotency_key": null}`` replaced by the
    operation's key (for SQL and Redis writes to record it), and every API
    call given an ``Idempotency-Key`` header unless it sets one itself."""
    prepared: list[Any] = []
    for offset, operation in enumerate(operations):
        operation = rebase(operation, start)
        operation = _with_key(operation, idempotency_key(job_id, start + offset))
        if isinstance(operation, Mapping) and operation.get("type") == "api":
            headers = operation.get("headers")
            if headers is None or isinstance(headers, Mapping):
                given = {str(k).lower() for k in (headers or {})}
                if IDEMPOTENCY_HEADER.lower() not in given:
                    operation = {
                        **operation,
                        "headers": {
                            **(headers or {}),
                            IDEMPOTENCY_HEADER: idempotency_key(job_id, start + offset),
                        },
                    }
        prepared.append(operation)
    return prepared


def _with_key(value: Any, key: str) -> Any:
    """``value`` with every ``{"$idempotency_key": ...}`` object replaced by
    ``key``; containers on the way are copied, ``value`` is unchanged."""
    if KEY_MARKER not in orjson.dumps(value, default=str).decode():
        return value
    root: list[Any] = [value]
    pending: list[tuple[Any, Any, Any]] = [(root, 0, value)]
    while pending:
        container, slot, item = pending.pop()
        if isinstance(item, Mapping):
            if len(item) == 1 and KEY_MARKER in item:
                container[slot] = key
                continue
            copy = dict(item)
            container[slot] = copy
            pending.extend((copy, k, v) for k, v in copy.items())
        elif isinstance(item, list):
            items = list(item)
            container[slot] = items
            pending.extend((items, i, v) for i, v in enumerate(items))
    return root[0]
