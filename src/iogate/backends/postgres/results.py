"""An asyncpg result as iogate's ``Result`` (docs/guide.md, "Result shape")."""

from __future__ import annotations

from typing import Any

from iogate.backends.rows import rows_result
from iogate.core.result import Result

__all__ = ["to_result"]

_WRITE_VERBS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "COPY"})


def to_result(rows: list[Any], status: str, max_rows: int | None) -> Result:
    """``rows`` (asyncpg Records) and the command status as a Result.

    ``rows_affected`` comes from the status of a write (``INSERT 0 3``).
    """
    verb, _, rest = status.partition(" ")
    rows_affected = None
    if verb in _WRITE_VERBS:
        count = rest.rsplit(" ", 1)[-1]
        rows_affected = int(count) if count.isdigit() else None
    columns = list(rows[0].keys()) if rows else ()
    return rows_result(columns, rows, max_rows, rows_affected)
