"""Which operations of a batch go to their database together.

Pure planning, no I/O: independent key-value operations on one Redis/memory
database become one pipeline, and the same INSERT/UPDATE (no ``RETURNING``)
repeated on one SQL database becomes one group run on one connection in one
transaction. Everything else, and anything that references another step or
is malformed, runs as itself. How a group runs is in :mod:`.groups`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from iogate.orchestrator.batch.plan import SQL_BACKENDS, Step

__all__ = ["GROUP_SIZE", "KV_BACKENDS", "Group", "Unit", "group_key", "plan_units"]

# Operations per pipeline / per SQL group: big enough to amortise round
# trips, small enough that several groups still run concurrently.
GROUP_SIZE = 1000
KV_BACKENDS = frozenset({"redis", "memory"})
_GROUPABLE_SQL = re.compile(r"^\s*(INSERT|UPDATE)\b", re.IGNORECASE)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)


class _HasBackend(Protocol):
    @property
    def backend(self) -> str: ...


@dataclass(slots=True)
class Group:
    """Independent operations sent to one resource together."""

    kind: str  # "kv" | "sql"
    db_name: str
    indices: list[int] = field(default_factory=list)


Unit = int | Group  # a step index, run alone, or a group


def plan_units(
    steps: Sequence[Step], databases: Mapping[str, _HasBackend], *, group: bool = True
) -> list[Unit]:
    """``steps`` as units of work in index order (a group sits at its first step).

    A group holds at most :data:`GROUP_SIZE` steps; a group of one gains
    nothing and runs as itself. ``group=False``: every step alone.
    """
    singles: list[Unit] = []
    groups: dict[tuple[str, ...], list[Group]] = {}
    for step in steps:
        key = group_key(step, databases) if group else None
        if key is None:
            singles.append(step.index)
            continue
        chunks = groups.setdefault(key, [])
        if not chunks or len(chunks[-1].indices) >= GROUP_SIZE:
            chunks.append(Group(kind=key[0], db_name=key[1]))
        chunks[-1].indices.append(step.index)
    units: list[Unit] = list(singles)
    for chunks in groups.values():
        for chunk in chunks:
            units.append(chunk if len(chunk.indices) > 1 else chunk.indices[0])
    units.sort(key=lambda u: u.indices[0] if isinstance(u, Group) else u)
    return units


def group_key(step: Step, databases: Mapping[str, _HasBackend]) -> tuple[str, ...] | None:
    """What ``step`` can be grouped by (None: it runs alone).

    ``("kv", db_name)`` for a key-value command, ``("sql", db_name, query)``
    for a repeatable INSERT/UPDATE.
    """
    if step.error is not None or step.depends_on or step.kind != "database":
        return None
    db_name = step.spec["db_name"]
    manager = databases.get(db_name)
    if manager is None:
        return None
    query, params = step.spec["query"], step.spec.get("params")
    if manager.backend in KV_BACKENDS:
        if (
            isinstance(query, str)
            and isinstance(params, Mapping)
            and params.get("operation") not in ("pipeline", "transaction", None)
        ):
            return ("kv", db_name)
        return None
    if (
        manager.backend in SQL_BACKENDS
        and isinstance(query, str)
        and _GROUPABLE_SQL.match(query)
        and not _RETURNING.search(query)
    ):
        return ("sql", db_name, query)
    return None
